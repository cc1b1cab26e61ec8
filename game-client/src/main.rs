//! The terminal MMO's client (ratatui + crossterm); the lobby and game screens come with
//! the client issue. For now it checks that a server answers.

fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    match std::net::TcpStream::connect(&url) {
        Ok(_) => {
            println!("game-client: a server answers at {url}; the terminal UI is not built yet")
        }
        Err(e) => {
            eprintln!(
                "game-client: no server at {url} ({e}); start one with `cargo run -p game-server`"
            );
            std::process::exit(1);
        }
    }
}

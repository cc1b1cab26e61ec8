//! `new NAME`: writes a new game's crate, as `cargo new` writes a program: typed messages
//! (`src/protocol.rs`), handlers (`src/lib.rs`), a server binary with a `--bot N` mode
//! (`src/main.rs`), `TestRoom` tests (`tests/rules.rs`), a README, and the game in a
//! browser: a page on TypeScript bindings generated from its messages (`web/`, checked by
//! `tests/bindings.rs`) whose build (`assets/game.js`) the server ships. The files are in
//! `framework/template/` (`scripts/template-web` makes the generated ones again); this
//! module fills in the name and the framework's path.
//!
//! The crate is a workspace of its own that depends on this framework by path, and it
//! starts from the framework's own `Cargo.lock` when there is one, so that it builds
//! with the versions the framework was tested with (and reuses their builds when it
//! shares a target directory).

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// `(path, text)` of a file of `framework/template/`.
macro_rules! template {
    ($path:literal) => {
        ($path, include_str!(concat!("../template/", $path)))
    };
}

/// `(path, text)` of one of the framework's TypeScript bindings (`web/src/bindings`).
macro_rules! shared_binding {
    ($file:literal) => {
        (
            concat!("web/src/bindings/", $file),
            include_str!(concat!("../../web/src/bindings/", $file)),
        )
    };
}

/// The template's files: path in the new crate, then text. Most are in
/// `framework/template/`; the web page's typed client and the framework's part of its
/// bindings are the ones the MMO's page uses (`web/src`), so there is one copy of each.
const FILES: [(&str, &str); 25] = [
    ("Cargo.toml", include_str!("../template/Cargo.toml.tmpl")),
    template!("README.md"),
    template!("src/protocol.rs"),
    template!("src/lib.rs"),
    template!("src/main.rs"),
    template!("tests/rules.rs"),
    template!("tests/bindings.rs"),
    template!("assets/index.html"),
    template!("assets/game.js"),
    template!("web/package.json"),
    (
        "web/package-lock.json",
        include_str!("../../web/package-lock.json"),
    ),
    ("web/tsconfig.json", include_str!("../../web/tsconfig.json")),
    template!("web/src/game.ts"),
    ("web/src/client.ts", include_str!("../../web/src/client.ts")),
    template!("web/src/bindings/In.ts"),
    template!("web/src/bindings/Out.ts"),
    template!("web/src/bindings/Add.ts"),
    template!("web/src/bindings/Say.ts"),
    template!("web/src/bindings/Roll.ts"),
    shared_binding!("Envelope.ts"),
    shared_binding!("RoomEvent.ts"),
    shared_binding!("Ticket.ts"),
    shared_binding!("Matchmake.ts"),
    shared_binding!("RoomView.ts"),
    shared_binding!("serde_json/JsonValue.ts"),
];

/// Names cargo refuses for a package, or that would shadow a crate every game uses.
const RESERVED: [&str; 12] = [
    "test",
    "self",
    "super",
    "crate",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "serde",
    "tokio",
    "build",
    "deps",
];

/// Checks `name` as a package name: 1 to 64 lowercase letters, digits, `-` or `_`,
/// starting with a letter.
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !RESERVED.contains(&name.replace('-', "_").as_str())
        && name.replace('-', "_") != "game_server_less";
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} cannot name a game's crate: use 1 to 64 lowercase letters, digits, - or _, starting with a letter (and not a name like test or std)"
        )))
    }
}

/// Writes the game `name` into `dir` (which must not exist, or be empty), depending on
/// the framework at `framework` (the directory of its `Cargo.toml`). Answers the files
/// written.
pub fn write(dir: &Path, name: &str, framework: &Path) -> Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty {
            return Err(Error::Conflict(format!(
                "{} already exists and is not empty: pick another name or --dir",
                dir.display()
            )));
        }
    }
    let framework = framework.display().to_string();
    if framework.contains(['"', '\\', '\n']) {
        return Err(Error::Invalid(format!(
            "the framework's path {framework:?} cannot go into Cargo.toml as it is"
        )));
    }
    let krate = name.replace('-', "_");
    let mut written = Vec::new();
    for (path, text) in FILES {
        let text = text
            // The web page's npm package (its lock is the MMO page's).
            .replace("\"game-server-less-web\"", "\"__NAME__-web\"")
            .replace("__NAME__", name)
            .replace("__CRATE__", &krate)
            .replace("__FRAMEWORK__", &framework);
        written.push(put(&dir.join(path), &text)?);
    }
    written.push(put(
        &dir.join(".gitignore"),
        "/target\n/web/node_modules\n",
    )?);
    let lock = Path::new(&framework).join("../Cargo.lock");
    if let Ok(lock) = std::fs::read_to_string(lock) {
        written.push(put(&dir.join("Cargo.lock"), &lock)?);
    }
    Ok(written)
}

fn put(path: &Path, text: &str) -> Result<PathBuf> {
    let fail = |e: std::io::Error| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write {}: {e}", path.display()),
        ))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    std::fs::write(path, text).map_err(fail)?;
    Ok(path.to_owned())
}

/// This framework's directory, as it was built.
pub fn framework_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_cargo_would() {
        for good in ["dungeon", "my-game", "tanks_2"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "Game",
            "2fast",
            "my game",
            "../x",
            "a/b",
            "test",
            "std",
            "game-server-less",
            &"x".repeat(65),
            "café",
            "-x",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_a_crate_named_after_the_game_and_never_over_one() {
        let dir = std::env::temp_dir().join(format!("gsl-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write(&dir, "space-ants", &framework_dir()).unwrap();
        assert!(files.len() >= 7, "{files:?}");
        let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"space-ants\""), "{toml}");
        assert!(toml.contains(&framework_dir().display().to_string()));
        let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
        assert!(main.contains("space_ants::kinds()"), "{main}");
        let lock = std::fs::read_to_string(dir.join("web/package-lock.json")).unwrap();
        assert!(lock.contains("\"name\": \"space-ants-web\""), "{lock}");
        assert!(!lock.contains("game-server-less-web"), "{lock}");
        for (path, _) in FILES {
            let text = std::fs::read_to_string(dir.join(path)).unwrap();
            assert!(!text.contains("__"), "{path} has a placeholder left");
        }
        let again = write(&dir, "space-ants", &framework_dir()).unwrap_err();
        assert!(matches!(again, Error::Conflict(_)), "{again}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The web page's TypeScript types (`web/src/bindings`) are generated from the Rust
//! ones by ts-rs: the game's messages (`In`, `Out`) and the framework's (the envelope
//! of every room message, the ticket, the lobby's answers), which `web/src/client.ts`
//! uses. `cargo test --features ts` fails when the files there are stale;
//! `BLESS=1 cargo test --features ts` writes them, and `cd web && npm run build` then
//! rebuilds the page.
#![cfg(feature = "ts")]

use __CRATE__::protocol::{In, Out};
use game_server_less::proto::{Envelope, Matchmake, RoomView, Ticket};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use ts_rs::TS;

#[test]
fn the_pages_types_are_the_rust_ones() {
    let fresh = std::env::temp_dir().join(format!("__NAME__-bindings-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    In::export_all_to(&fresh).unwrap();
    Envelope::<Out>::export_all_to(&fresh).unwrap();
    Matchmake::export_all_to(&fresh).unwrap();
    RoomView::export_all_to(&fresh).unwrap();
    Ticket::export_all_to(&fresh).unwrap();
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/src/bindings");
    let (want, have) = (files(&fresh), files(&kept));
    if std::env::var_os("BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&kept);
        for (path, text) in &want {
            std::fs::create_dir_all(kept.join(path).parent().unwrap()).unwrap();
            std::fs::write(kept.join(path), text).unwrap();
        }
    } else {
        let stale: BTreeSet<_> = want
            .keys()
            .chain(have.keys())
            .filter(|path| want.get(*path) != have.get(*path))
            .collect();
        assert!(
            stale.is_empty(),
            "web/src/bindings is stale ({stale:?} differ from the Rust types): \
             BLESS=1 cargo test --features ts writes them, then cd web && npm run build"
        );
    }
    let _ = std::fs::remove_dir_all(&fresh);
}

/// Every file under `dir`, by its path from there, with its text.
fn files(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(next) = dirs.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                found.insert(path.strip_prefix(dir).unwrap().to_owned(), text);
            }
        }
    }
    found
}

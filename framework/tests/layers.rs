//! The crate's layer map holds: `lib.rs` lists its modules from the bottom up, each
//! module's code imports (`crate::…`) only modules listed before it, every module is
//! listed, and ARCHITECTURE.md carries the same list in the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first `name` (or [`name`]) in backquotes on a numbered line `N. …`.
fn numbered_module(line: &str) -> Option<String> {
    let (number, rest) = line.trim_start().split_once(". ")?;
    number.parse::<u32>().ok()?;
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(rest[start..start + len].to_owned())
}

/// The layer list in `lib.rs`'s docs, bottom first.
fn lib_layers() -> Vec<String> {
    read(&root().join("src/lib.rs"))
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .filter_map(numbered_module)
        .collect()
}

/// The layer list in ARCHITECTURE.md, between `<!-- layers -->` and `<!-- /layers -->`.
fn architecture_layers() -> Vec<String> {
    let text = read(&root().join("../ARCHITECTURE.md"));
    let start = text
        .find("<!-- layers -->")
        .expect("ARCHITECTURE.md marks its layer list");
    let end = text.find("<!-- /layers -->").expect("and where it ends");
    text[start..end]
        .lines()
        .filter_map(numbered_module)
        .collect()
}

/// The modules `lib.rs` declares (`mod x;`, `pub mod x;`).
fn declared_modules() -> BTreeSet<String> {
    read(&root().join("src/lib.rs"))
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let name = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(name.trim_end_matches(';').to_owned())
        })
        .collect()
}

/// Code without comments and without its test module.
fn code_of(path: &Path) -> String {
    let text = read(path);
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segments after each `crate::` (and in `crate::{a, b::c}` groups),
/// and after `super::` where `super` is the crate root.
fn imports(code: &str, super_is_root: bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut prefixes = vec!["crate::"];
    if super_is_root {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
                continue; // `$crate::`, `foo::crate::`, `super::super::`
            }
            let rest = &code[at + prefix.len()..];
            match rest.strip_prefix('{') {
                Some(group) => found.extend(group_heads(group)),
                None => found.extend(ident(rest).filter(|i| i != "super" && i != "self")),
            }
        }
    }
    found
}

/// The first segment of each item of a `{…}` group, nested groups skipped.
fn group_heads(group: &str) -> Vec<String> {
    let (mut depth, mut item_start, mut heads) = (0, true, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                item_start = false;
                heads.extend(ident(&group[i..]));
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> Option<String> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_owned())
}

/// Every `.rs` file of module `name`: `src/name.rs` and everything under `src/name/`.
fn files_of(name: &str) -> Vec<PathBuf> {
    let src = root().join("src");
    let mut files = vec![];
    let single = src.join(format!("{name}.rs"));
    if single.exists() {
        files.push(single);
    }
    let mut dirs = vec![src.join(name)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn lib_rs_and_architecture_md_carry_the_same_layer_list() {
    let lib = lib_layers();
    assert!(
        lib.len() > 10,
        "lib.rs lists its layers as `N. [`module`]: …`: {lib:?}"
    );
    assert_eq!(
        lib,
        architecture_layers(),
        "lib.rs (left) and ARCHITECTURE.md (right)"
    );
}

#[test]
fn every_module_is_in_the_layer_list() {
    let listed: BTreeSet<String> = lib_layers().into_iter().collect();
    let declared = declared_modules();
    let missing: Vec<_> = declared.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "modules not in lib.rs's layer list: {missing:?}"
    );
    assert!(gone.is_empty(), "listed but not declared: {gone:?}");
}

#[test]
fn every_import_points_down_the_layer_list() {
    let layers = lib_layers();
    let place: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut upward = Vec::new();
    for (i, module) in layers.iter().enumerate() {
        for file in files_of(module) {
            let name = file.file_name().unwrap();
            let top = file.parent() == Some(&root().join("src")) || name == "mod.rs";
            for import in imports(&code_of(&file), top) {
                // Names that are not modules of this crate (re-exports of the crates
                // below, or items of the crate root) are not layers.
                let Some(&j) = place.get(import.as_str()) else {
                    continue;
                };
                if j > i {
                    let file = file.strip_prefix(root()).unwrap().display().to_string();
                    upward.push(format!(
                        "{file}: {module} (layer {}) uses {import} (layer {})",
                        i + 1,
                        j + 1
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up the layer list:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_import_scanner_finds_paths_and_groups() {
    let code = "use crate::{broker::Broker, names, store::{Store, X}};\nlet x = crate::token::f();\nuse $crate::y; super::super::z";
    let found: Vec<String> = imports(code, true).into_iter().collect();
    assert_eq!(found, ["broker", "names", "store", "token"]);
}

#[test]
fn the_scan_sees_each_modules_files() {
    let worker: BTreeSet<String> = files_of("worker")
        .iter()
        .flat_map(|f| imports(&code_of(f), f.ends_with("mod.rs")))
        .collect();
    for below in ["store", "msg", "room", "admin"] {
        assert!(worker.contains(below), "worker uses {below}: {worker:?}");
    }
}

//! The player keys this client keeps between runs. A name belongs to whoever first joined
//! with it; that join answers a player key, which every later join with the name must
//! show. Keys live in `keys.json` in the config directory: `$GSL_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/game-server-less`, else `~/.config/game-server-less`.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Player keys by lobby URL and name.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    path: Option<PathBuf>,
    keys: BTreeMap<String, String>,
}

fn config_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("GSL_CONFIG_DIR")
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("game-server-less")))
        .or_else(|| var("HOME").map(|h| h.join(".config/game-server-less")))
}

fn entry(server: &str, name: &str) -> String {
    format!("{} {name}", server.trim_end_matches('/'))
}

impl Keys {
    /// The keys kept in the config directory (none if it has none, or cannot be read).
    pub(crate) fn load() -> Keys {
        let path = config_dir().map(|d| d.join("keys.json"));
        let keys = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Keys { path, keys }
    }

    /// The key of `name` on the lobby at `server`.
    pub(crate) fn get(&self, server: &str, name: &str) -> Option<&str> {
        self.keys.get(&entry(server, name)).map(String::as_str)
    }

    /// Keeps the key of `name` on `server`, in memory and in the file; says why not if
    /// the file cannot be written.
    pub(crate) fn set(&mut self, server: &str, name: &str, key: &str) -> Result<(), String> {
        self.keys.insert(entry(server, name), key.to_owned());
        let Some(path) = &self.path else {
            return Err(
                "no config directory (set GSL_CONFIG_DIR or HOME) to keep the player key in".into(),
            );
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let json = serde_json::to_vec_pretty(&self.keys).expect("strings serialize");
            std::io::Write::write_all(&mut options.open(path)?, &json)
        };
        write().map_err(|e| format!("cannot keep the player key in {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_outlive_the_client() {
        let dir = std::env::temp_dir().join(format!("gsl-keys-{}", std::process::id()));
        let path = dir.join("keys.json");
        let mut keys = Keys {
            path: Some(path.clone()),
            keys: BTreeMap::new(),
        };
        keys.set("http://h:1/", "ann", "k1.ann.s").unwrap();
        let again = Keys {
            path: Some(path.clone()),
            keys: serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap(),
        };
        assert_eq!(again.get("http://h:1", "ann"), Some("k1.ann.s"));
        assert_eq!(again.get("http://h:1", "bob"), None);
        assert_eq!(again.get("http://h:2", "ann"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}

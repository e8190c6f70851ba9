//! The house rules a compiler does not check, as tests (the idea of `shared/tools/house-check`,
//! carried into the rooms it does not look into):
//! - every policy file, nested rooms included (`policy/lanes/`, `policy/chain/`), reaches for no
//!   runtime and no clock, neither itself nor through the crate modules it uses;
//! - an actor module never imports another actor module: actors talk through `protocol`, and
//!   only the supervisor (which spawns them) and the facade (which starts the supervisor) name
//!   them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const CORE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/actors/src");

/// The `.rs` files under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Is `path` a test module of its own: declared `#[cfg(test)] mod name;` by its parent
/// (`dir.rs` or `dir/mod.rs` beside it)?
fn is_test_module(path: &Path) -> bool {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem()) else {
        return false;
    };
    let (module_dir, name) = if stem == "mod" {
        match (dir.parent(), dir.file_name()) {
            (Some(up), Some(name)) => (up.to_path_buf(), name.to_string_lossy().to_string()),
            _ => return false,
        }
    } else {
        (dir.to_path_buf(), stem.to_string_lossy().to_string())
    };
    let parents = [
        module_dir.join("mod.rs"),
        module_dir.with_extension("rs"),
        dir.join("mod.rs"),
        dir.with_extension("rs"),
    ];
    let declared = format!("#[cfg(test)]\nmod {name};");
    parents
        .iter()
        .filter(|p| p.as_path() != path)
        .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(&declared)))
}

/// A file's text without its unit tests (from the first `#[cfg(test)]` test module at the
/// top level on; a `#[cfg(test)]` helper inside an impl stays). A test module of its own is
/// empty.
fn non_test(path: &Path) -> String {
    if is_test_module(path) {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    text.split("\n#[cfg(test)]\nmod ")
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Does `text` name a runtime or read a clock?
fn reaches_for_runtime(text: &str) -> Option<&'static str> {
    [
        "tokio::",
        "ractor::",
        "reqwest::",
        "SystemTime::now",
        "Instant::now(",
    ]
    .into_iter()
    .find(|needle| text.contains(needle))
}

/// The top-level crate modules `text` names (`crate::name`).
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// The text of top-level core module `name` (a file, or a directory's files), without tests.
fn module_text(name: &str) -> Option<String> {
    let file = Path::new(CORE).join(format!("{name}.rs"));
    if file.exists() {
        return Some(non_test(&file));
    }
    let dir = Path::new(CORE).join(name);
    dir.is_dir()
        .then(|| rust_files(&dir).iter().map(|p| non_test(p)).collect())
}

#[test]
fn policies_reach_for_no_runtime_in_any_room() {
    let policy = Path::new(CORE).join("policy");
    let files = rust_files(&policy);
    assert!(
        files.iter().any(|p| p.parent() != Some(policy.as_path())),
        "the policy wing has nested rooms (lanes/, chain/): this test must see them"
    );
    let mut found = Vec::new();
    for path in &files {
        let text = non_test(path);
        let shown = path.strip_prefix(CORE).unwrap().display().to_string();
        if let Some(what) = reaches_for_runtime(&text) {
            found.push(format!("{shown} names {what}"));
        }
        for dep in crate_modules(&text) {
            if dep == "policy" {
                continue;
            }
            if let Some(what) = module_text(&dep).as_deref().and_then(reaches_for_runtime) {
                found.push(format!("{shown} uses crate::{dep}, which names {what}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn actor_modules_never_import_each_other() {
    // The modules that hold an actor (`impl Actor for`), and those allowed to name them all.
    let mut actors = BTreeSet::new();
    let mut modules = Vec::new();
    for entry in std::fs::read_dir(CORE).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "policy" {
            continue;
        }
        let Some(text) = module_text(&name) else {
            continue;
        };
        if text.contains("impl Actor for") {
            actors.insert(name.clone());
        }
        modules.push((name, text));
    }
    for expected in ["breaker", "governor", "monitor", "request", "supervisor"] {
        assert!(actors.contains(expected), "{expected} holds an actor");
    }
    let roots = ["supervisor", "runtime"];
    let mut found = Vec::new();
    for (name, text) in &modules {
        if roots.contains(&name.as_str()) {
            continue;
        }
        for dep in crate_modules(text) {
            if dep != *name && actors.contains(&dep) && !roots.contains(&dep.as_str()) {
                found.push(format!("{name} imports actor module {dep}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

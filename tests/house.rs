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

/// A cycle in `graph`, if any (as the path that closes it).
fn find_cycle(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_cycle_between_modules_or_between_the_rooms_of_one() {
    use std::collections::BTreeMap;
    // The core's top-level modules, and the policy wing's rooms one by one (the wing is many
    // independent rooms: `policy::chain` using `call` while `error` uses `policy::classify` is
    // no cycle).
    let named = |text: &str| -> BTreeSet<String> {
        let mut out = crate_modules(text);
        if out.remove("policy") {
            for (i, _) in text.match_indices("crate::policy::") {
                let room: String = text[i + "crate::policy::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(format!("policy::{room}"));
            }
        }
        out
    };
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(CORE).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "policy" {
            continue;
        }
        if let Some(text) = module_text(&name) {
            top.insert(name.clone(), named(&text));
        }
    }
    for entry in std::fs::read_dir(Path::new(CORE).join("policy")).unwrap() {
        let path = entry.unwrap().path();
        let room = path.file_stem().unwrap().to_string_lossy().to_string();
        if room == "mod" {
            continue;
        }
        let text: String = if path.is_dir() {
            rust_files(&path).iter().map(|p| non_test(p)).collect()
        } else {
            non_test(&path)
        };
        let mut deps = named(&text);
        // `super::x` inside the wing names a sibling room.
        for (i, _) in text.match_indices("super::") {
            let sibling: String = text[i + "super::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            deps.insert(format!("policy::{sibling}"));
        }
        top.entry(format!("policy::{room}"))
            .or_default()
            .extend(deps);
    }
    let known: BTreeSet<String> = top.keys().cloned().collect();
    for deps in top.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    for (n, deps) in top.iter_mut() {
        deps.remove(n);
    }
    assert_eq!(find_cycle(&top), None, "a cycle between core modules");
    // The files of each directory module, by `super::x` and `crate::dir::x`.
    let mut dirs = vec![PathBuf::from(CORE).join("policy")];
    for entry in std::fs::read_dir(CORE).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            dirs.push(path.clone());
            for sub in std::fs::read_dir(&path).unwrap() {
                let sub = sub.unwrap().path();
                if sub.is_dir() {
                    dirs.push(sub);
                }
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let within = dir
            .strip_prefix(CORE)
            .unwrap()
            .to_string_lossy()
            .replace('/', "::");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        let names: BTreeSet<String> = files
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
            .filter(|n| n != "mod")
            .collect();
        for path in &files {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if name == "mod" {
                continue;
            }
            let text = non_test(path);
            let deps = names
                .iter()
                .filter(|other| **other != name)
                .filter(|other| {
                    text.contains(&format!("super::{other}"))
                        || text.contains(&format!("crate::{within}::{other}"))
                })
                .cloned()
                .collect();
            graph.insert(name, deps);
        }
        assert_eq!(
            find_cycle(&graph),
            None,
            "a cycle between the files of {within}"
        );
    }
}

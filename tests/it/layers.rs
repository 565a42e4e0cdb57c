//! The layering `src/lib.rs` states under `# Layout` is true of the code:
//! every module uses only modules of its own layer or earlier ones, no two
//! modules use each other (directly or around a loop), and no two files of
//! one module do — also when one takes the other's type through the
//! parent's `pub use` re-export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A file's code as the build sees it outside tests: comments dropped, and
/// everything from the first `#[cfg(test)]` on (herald keeps tests last).
fn code(path: &Path) -> String {
    code_of(&std::fs::read_to_string(path).unwrap())
}

/// Names that follow `prefix` in `text`: `crate::policy::X` gives `policy`;
/// `super::{held::Held, job}` gives `held` and `job`.
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rest in text.split(prefix).skip(1) {
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap();
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                names.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names.remove("");
    names
}

/// The library's modules, each with the files it is made of.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if ["lib", "main", "bin", "cmd"].contains(&name.as_str()) {
            continue;
        }
        let files = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .filter(|p| p.file_stem().unwrap() != "tests")
                .collect()
        } else {
            vec![path]
        };
        modules.insert(name, files);
    }
    modules
}

/// The layers of `src/lib.rs`'s `# Layout`, by module.
fn layers() -> BTreeMap<String, usize> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut layers = BTreeMap::new();
    let mut layer = 0;
    for line in lib.lines().map(|l| l.trim_start_matches("//!").trim()) {
        if let Some((n, _)) = line.split_once(". ") {
            if let Ok(n) = n.parse::<usize>() {
                layer = n;
            }
        }
        if layer == 0 {
            continue;
        }
        for piece in line.split("[`").skip(1) {
            let name = piece.split('`').next().unwrap();
            if !name.contains("::") {
                layers.entry(name.to_string()).or_insert(layer);
            }
        }
        if let Some(name) = line.strip_prefix(&format!("{layer}. `")) {
            layers.insert(name.split('`').next().unwrap().to_string(), layer);
        }
    }
    // `run` and `start` name the service module's entry points.
    if let Some(&service) = layers.get("run") {
        layers.insert("service".into(), service);
    }
    layers
}

fn has_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_use_only_their_own_layer_and_earlier_ones_and_never_each_other() {
    let modules = modules();
    let layers = layers();
    let unplaced: Vec<&String> = modules
        .keys()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from lib.rs's # Layout: {unplaced:?}"
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (module, files) in &modules {
        for file in files {
            for used in names_after(&code(file), "crate::") {
                if &used == module || !modules.contains_key(&used) {
                    continue;
                }
                if layers[&used] > layers[module] {
                    upward.push(format!("{} uses {used}", file.display()));
                }
                graph.entry(module.clone()).or_default().insert(used);
            }
        }
    }
    assert!(upward.is_empty(), "uses of a later layer: {upward:#?}");
    assert_eq!(has_cycle(&graph), None, "modules that use each other");
}

/// The names `mod.rs` re-exports from its own files: `pub use held::{Held,
/// HeldQueue}` gives `Held` → `held` and `HeldQueue` → `held`.
fn re_exports(mod_rs: &Path) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(mod_rs) else {
        return names;
    };
    for rest in code_of(&text).split("pub use ").skip(1) {
        let statement = rest.split(';').next().unwrap();
        let Some((file, items)) = statement.split_once("::") else {
            continue;
        };
        if file.starts_with("crate") || file.starts_with("super") {
            continue;
        }
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let item = item.split(" as ").last().unwrap().trim();
            if item.starts_with(|c: char| c.is_ascii_uppercase()) {
                names.insert(item.to_string(), file.trim().to_string());
            }
        }
    }
    names
}

/// [`code`] of a text in hand.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The type names a file takes from `super::` directly: `super::{Job,
/// held::Held}` gives `Job` (a path through a sibling is counted as that
/// sibling, by [`names_after`]).
fn parent_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rest in text.split("super::").skip(1) {
        let group = match rest.strip_prefix('{') {
            Some(g) => g.split('}').next().unwrap().to_string(),
            None => rest
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap()
                .to_string(),
        };
        for part in group.split(',') {
            let part = part.trim();
            if part.starts_with(|c: char| c.is_ascii_uppercase()) {
                names.insert(part.split(" as ").next().unwrap().trim().to_string());
            }
        }
    }
    names
}

#[test]
fn no_two_files_of_a_module_use_each_other() {
    for (module, files) in modules() {
        let siblings: BTreeSet<String> = files
            .iter()
            .map(|f| f.file_stem().unwrap().to_string_lossy().to_string())
            .filter(|f| f != "mod")
            .collect();
        // A file that takes a sibling's type through the parent's re-export
        // (`use super::Decider;`) uses that sibling all the same.
        let exported = re_exports(&src().join(&module).join("mod.rs"));
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let name = file.file_stem().unwrap().to_string_lossy().to_string();
            if name == "mod" {
                continue;
            }
            let text = code(file);
            let mut used = names_after(&text, "super::");
            used.extend(names_after(&text, &format!("crate::{module}::")));
            for item in parent_names(&text) {
                used.extend(exported.get(&item).cloned());
            }
            for other in used.intersection(&siblings) {
                if *other != name {
                    graph.entry(name.clone()).or_default().insert(other.clone());
                }
            }
        }
        assert_eq!(
            has_cycle(&graph),
            None,
            "files of {module} that use each other"
        );
    }
}

#[test]
fn a_child_taking_a_siblings_type_through_the_parent_is_seen() {
    let mod_rs = std::env::temp_dir().join(format!("herald-layers-{}.rs", std::process::id()));
    std::fs::write(
        &mod_rs,
        "mod decide;\nmod decider;\npub use decider::{Decider, Other as Renamed};\npub use crate::x::Y;\n",
    )
    .unwrap();
    let exported = re_exports(&mod_rs);
    std::fs::remove_file(&mod_rs).unwrap();
    assert_eq!(exported.get("Decider").map(String::as_str), Some("decider"));
    assert_eq!(exported.get("Renamed").map(String::as_str), Some("decider"));
    assert_eq!(exported.get("Y"), None, "not a file of this module");
    let child = code_of("use super::{ChannelRuntime, Decider};\nuse super::job::Job;\n");
    assert_eq!(
        parent_names(&child),
        BTreeSet::from(["ChannelRuntime".to_string(), "Decider".to_string()])
    );
}

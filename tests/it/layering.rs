//! The module layering written at the top of `src/lib.rs` holds: every `crate::X` path in a
//! top-level module's files names a module on a line above that module's own line. A new
//! up-reaching import fails here with its file, line and path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module name → its line in the list (1 = the leaves).
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((n, names)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        for name in names.split(',') {
            out.insert(name.trim().to_string(), n);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module names of `crate::…` paths in one line of code (comments dropped),
/// including each head of a `crate::{a, b::c}` group.
fn crate_refs(code: &str) -> Vec<String> {
    let code = code.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let preceded = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[i + "crate::".len()..];
        if preceded {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.push(head(item.trim()));
            }
        } else {
            out.push(head(rest));
        }
    }
    out
}

fn head(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every import that breaks the list, as `file:line: module imports crate::x (…)`.
fn violations(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let layers = layers(&lib);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    let mut seen_modules = 0;
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("utf-8 path")
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&own) = layers.get(&top) else {
            out.push(format!(
                "src/{}: module `{top}` is not in the layering list in src/lib.rs",
                rel.display()
            ));
            continue;
        };
        seen_modules += 1;
        let text = std::fs::read_to_string(&file).expect("read source");
        // A multi-line `use crate::{…}` group: join it so each head is seen.
        let mut pending: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let (n, code) = match pending.take() {
                Some((n, mut acc)) => {
                    acc.push(' ');
                    acc.push_str(line);
                    (n, acc)
                }
                None => (i + 1, line.to_string()),
            };
            let code_only = code.split("//").next().unwrap_or("");
            if code_only.contains("crate::{") && !code_only.contains('}') {
                pending = Some((n, code));
                continue;
            }
            for m in crate_refs(&code) {
                let Some(&theirs) = layers.get(&m) else {
                    continue; // a macro or item at the crate root (`crate::outln!`)
                };
                if m != top && theirs >= own {
                    out.push(format!(
                        "src/{}:{n}: `{top}` (line {own}) imports crate::{m} (line {theirs}): {}",
                        rel.display(),
                        code.trim()
                    ));
                }
            }
        }
    }
    assert!(seen_modules > 50, "found only {seen_modules} source files");
    out
}

#[test]
fn every_module_imports_only_modules_above_it() {
    let found = violations(&src());
    assert!(
        found.is_empty(),
        "{} imports break the layering in src/lib.rs:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_list_names_every_top_level_module() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let layers = layers(&lib);
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ") {
            let name = name.trim_end_matches(';');
            assert!(layers.contains_key(name), "`{name}` is not in the list");
        }
    }
    assert!(layers["model"] < layers["config"] && layers["config"] < layers["cli"]);
}

#[test]
fn the_check_names_file_line_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("config.rs"), "use crate::model::A;\n").unwrap();
    std::fs::write(
        src.join("model.rs"),
        "// crate::config in a comment is fine\nuse crate::{\n    config::B,\n};\n",
    )
    .unwrap();
    for i in 0..60 {
        std::fs::write(src.join(format!("m{i}.rs")), "").unwrap();
    }
    let mut lib = String::from("//! 1. model\n//! 2. config\n");
    for i in 0..60 {
        lib.push_str(&format!("//! 3. m{i}\n"));
    }
    std::fs::write(src.join("lib.rs"), lib).unwrap();
    let found = violations(src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src/model.rs:2: `model` (line 1) imports crate::config (line 2)"),
        "{}",
        found[0]
    );
}

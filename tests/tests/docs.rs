//! The README, the changelog and the book (`docs/src`) hold together: every relative link points
//! at a file that exists (and, with `#anchor`, at one of its headings), every chapter is listed
//! in the book's `SUMMARY.md`, and the README stays short.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every Markdown file of the book, the README and the changelog.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md"), root().join("CHANGELOG.md")];
    let mut dirs = vec![root().join("docs/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The targets of the inline links `[text](target)` in `text`, outside code blocks and spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        // Code spans hold examples, not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// GitHub's and mdBook's anchor of a heading: lower case, punctuation dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_block = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                in_block = !in_block;
            }
            !in_block && l.starts_with('#')
        })
        .map(|l| slug(l.trim_start_matches('#').replace('`', "").as_str()))
        .collect()
}

#[test]
fn every_relative_link_resolves_to_a_file_and_heading() {
    let mut broken = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() { doc.clone() } else { doc.parent().unwrap().join(file) };
            if !path.exists() {
                broken.push(format!("{}: {target} (no such file)", doc.display()));
                continue;
            }
            if !anchor.is_empty() && path.extension().is_some_and(|e| e == "md") {
                let headings = anchors(&std::fs::read_to_string(&path).unwrap());
                if !headings.contains(anchor) {
                    broken.push(format!("{}: {target} (no such heading)", doc.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_books_summary_lists_every_chapter_and_the_readme_stays_short() {
    let src = root().join("docs/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    let listed: BTreeSet<PathBuf> = link_targets(&summary).iter().map(|t| src.join(t)).collect();
    let chapters: BTreeSet<PathBuf> = documents().into_iter().filter(|p| p.starts_with(&src) && !p.ends_with("SUMMARY.md")).collect();
    let missing: Vec<_> = chapters.difference(&listed).collect();
    assert!(missing.is_empty(), "chapters not in SUMMARY.md: {missing:?}");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.lines().count() <= 200, "the README is the front door: at most about 200 lines, now {}", readme.lines().count());
}

#[test]
fn the_link_checker_finds_links_and_headings() {
    let text = "# A `code` title\n[a](x.md#b-c) `[not](y)`\n```\n[no](z)\n```\n## B, c!\n";
    assert_eq!(link_targets(text), ["x.md#b-c"]);
    assert_eq!(anchors(text), BTreeSet::from(["a-code-title".to_string(), "b-c".to_string()]));
}

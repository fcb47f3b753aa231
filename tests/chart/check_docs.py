#!/usr/bin/env python3
"""Checks on docs/ and the CRD reference.

Usage: check_docs.py <repository root>

- every relative Markdown link in docs/*.md points at an existing file, and
  every #anchor at an existing heading (GitHub's anchor rules);
- every field of every CRD (crds/m2m.dev_crds.yaml) appears in
  docs/reference.md, so the reference cannot silently fall behind the types.

Prints `ok - …` / `not ok - …` lines like assert_rendered.py.
"""

import pathlib
import re
import sys

import yaml

results = []


def check(what, cond, why=""):
    results.append((what, bool(cond), why))


def anchor(heading):
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path):
    found, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(anchor(line.lstrip("#")))
    return found


def field_paths(schema, prefix=""):
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        if prop.get("type") == "object":
            yield from field_paths(prop, path)
        if prop.get("type") == "array" and "properties" in prop.get("items", {}):
            yield from field_paths(prop["items"], path + "[]")


def main():
    root = pathlib.Path(sys.argv[1])
    docs = sorted((root / "docs").glob("*.md"))
    check("docs/ has pages", docs)
    link = re.compile(r"\]\(([^)\s]+)\)")
    for page in docs:
        # Links outside code: drop fenced blocks and inline code spans.
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        text = re.sub(r"`[^`\n]*`", "", text)
        bad = []
        for target in link.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            file_part, _, frag = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                bad.append(target)
            elif frag and dest.suffix == ".md" and frag not in anchors_of(dest):
                bad.append(target)
        check(f"links resolve: docs/{page.name}", not bad, bad)

    reference = (root / "docs" / "reference.md").read_text(encoding="utf-8")
    with open(root / "crds" / "m2m.dev_crds.yaml", encoding="utf-8") as f:
        crds = [d for d in yaml.safe_load_all(f) if d]
    for crd in crds:
        kind = crd["spec"]["names"]["kind"]
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        missing = [
            p
            for top in ("spec", "status")
            if top in schema["properties"]
            for p in field_paths(schema["properties"][top], top)
            if f"`{p}`" not in reference
        ]
        check(f"docs/reference.md documents every {kind} field", not missing, missing)

    failed = 0
    for what, ok, why in results:
        print(f"ok - {what}" if ok else f"not ok - {what}: {why}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

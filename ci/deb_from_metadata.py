#!/usr/bin/env python3
"""Assemble the .deb with dpkg-deb from [package.metadata.deb] in Cargo.toml, for machines
without cargo-deb (ci/deb.sh falls back to this). Understands the subset of cargo-deb's
keys the package uses: assets (with globs), conf-files, maintainer-scripts, depends
("$auto" via dpkg-shlibdeps), recommends, section, priority, maintainer, descriptions.
Usage: deb_from_metadata.py TARGET_DIR   (the release binary must be built). Prints the
path of the .deb."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        check=True, capture_output=True, text=True,
    ).stdout
    pkg = json.loads(out)["packages"][0]
    return pkg, pkg["metadata"]["deb"]


def copy_assets(assets, target_dir, root):
    for src, dest, mode in assets:
        if src.startswith("target/"):
            src = os.path.join(target_dir, src[len("target/"):])
        files = sorted(glob.glob(src))
        if not files:
            sys.exit(f"asset {src!r} matches no file")
        for f in files:
            d = os.path.join(root, dest)
            if dest.endswith("/"):
                d = os.path.join(d, os.path.basename(f))
            os.makedirs(os.path.dirname(d), exist_ok=True)
            shutil.copyfile(f, d)
            os.chmod(d, int(mode, 8))


def depends(meta, root):
    deps = [d.strip() for d in meta.get("depends", "").split(",") if d.strip()]
    if "$auto" in deps:
        deps.remove("$auto")
        binary = os.path.join(root, "usr/bin/leap-edge")
        # dpkg-shlibdeps wants a debian/control next to it.
        with tempfile.TemporaryDirectory() as work:
            os.makedirs(os.path.join(work, "debian"))
            open(os.path.join(work, "debian/control"), "w").close()
            out = subprocess.run(
                ["dpkg-shlibdeps", "-O", binary], cwd=work,
                check=True, capture_output=True, text=True,
            ).stdout
        auto = out.strip().split("=", 1)[1]
        deps = [d.strip() for d in auto.split(",")] + deps
    return ", ".join(deps)


def control(pkg, meta, root, arch):
    desc = pkg["description"]
    ext = meta.get("extended-description", "").strip()
    size_kb = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs
    ) // 1024
    lines = [
        f"Package: {pkg['name']}",
        f"Version: {pkg['version']}-1",
        f"Architecture: {arch}",
        f"Maintainer: {meta['maintainer']}",
        f"Installed-Size: {size_kb}",
        f"Depends: {depends(meta, root)}",
        f"Recommends: {meta['recommends']}" if meta.get("recommends") else None,
        f"Section: {meta.get('section', 'misc')}",
        f"Priority: {meta.get('priority', 'optional')}",
        f"Description: {desc}",
        f" {ext}" if ext else None,
    ]
    return "\n".join(l for l in lines if l) + "\n"


def main():
    target_dir = sys.argv[1]
    pkg, meta = metadata()
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as root:
        copy_assets(meta["assets"], target_dir, root)
        debian = os.path.join(root, "DEBIAN")
        os.makedirs(debian)
        with open(os.path.join(debian, "control"), "w") as f:
            f.write(control(pkg, meta, root, arch))
        with open(os.path.join(debian, "conffiles"), "w") as f:
            f.write("".join(c + "\n" for c in meta.get("conf-files", [])))
        scripts = meta.get("maintainer-scripts")
        for name in ("preinst", "postinst", "prerm", "postrm"):
            src = os.path.join(scripts, name) if scripts else None
            if src and os.path.exists(src):
                shutil.copyfile(src, os.path.join(debian, name))
                os.chmod(os.path.join(debian, name), 0o755)
        out_dir = os.path.join(target_dir, "debian")
        os.makedirs(out_dir, exist_ok=True)
        deb = os.path.join(out_dir, f"{pkg['name']}_{pkg['version']}-1_{arch}.deb")
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", root, deb],
            check=True, stdout=subprocess.DEVNULL,
        )
    print(deb)


if __name__ == "__main__":
    main()

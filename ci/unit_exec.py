#!/usr/bin/env python3
"""Print a unit's ExecStart= as systemd would run it, NUL-separated, for ci/tunnel.sh:
`env -i` with the service's environment (Environment=, EnvironmentFile=,
CREDENTIALS_DIRECTORY), then the command with `${VAR}` and `%d` expanded.
LoadCredential= files are copied into CREDS_DIR.
Usage: unit_exec.py UNIT FROM=TO CREDS_DIR   (FROM=TO rewrites a path prefix, so that
/etc/leap-edge files can come from a test folder). Only what the leap-edge units use is
supported; anything else is an error rather than a silent difference from systemd."""

import os
import pwd
import re
import shlex
import shutil
import sys


def service_settings(unit_text):
    """(key, value) pairs of the [Service] section, continuation lines joined."""
    text = re.sub(r"\\\n", " ", unit_text)
    section, out = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def env_file(path):
    env = {}
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            sys.exit(f"{path}: not KEY=VALUE: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def main():
    unit, mapping, creds = sys.argv[1], sys.argv[2], sys.argv[3]
    src, _, dst = mapping.partition("=")
    remap = lambda p: dst + p[len(src):] if p.startswith(src + "/") else p
    user = pwd.getpwuid(os.getuid())
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
           "CREDENTIALS_DIRECTORY": creds}
    exec_start = None
    os.makedirs(creds, mode=0o700, exist_ok=True)
    for key, value in service_settings(open(unit).read()):
        if key == "Environment":
            for word in shlex.split(value):
                k, _, v = word.partition("=")
                env[k] = v
        elif key == "EnvironmentFile":
            env.update(env_file(remap(value)))
        elif key == "LoadCredential":
            cid, _, path = value.partition(":")
            shutil.copyfile(remap(path), os.path.join(creds, cid))
            os.chmod(os.path.join(creds, cid), 0o400)
        elif key == "ExecStart":
            exec_start = value
    if not exec_start or exec_start[0] in "-@:+!":
        sys.exit(f"{unit}: no plain ExecStart=")

    def expand(word):
        def var(m):
            if m.group(1) not in env:
                sys.exit(f"{unit}: ExecStart uses ${{{m.group(1)}}}, which nothing sets")
            return env[m.group(1)]
        word = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", var, word)
        if re.search(r"%[^d%]", word):
            sys.exit(f"{unit}: unsupported specifier in {word!r}")
        return word.replace("%d", creds).replace("%%", "%")

    argv = [expand(w) for w in shlex.split(exec_start)]
    envv = [f"{k}={v}" for k, v in env.items()]
    sys.stdout.write("\0".join(["env", "-i", *envv, *argv]) + "\0")


if __name__ == "__main__":
    main()

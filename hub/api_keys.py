"""API keys made by `keyop hub acl`: one key file per account under DIR/secrets/, and
DIR/api-keys.yaml with their hashes for hub.yaml to include (`include: [api-keys.yaml]`), so no
hash is copied by hand.

- the operator's admin key, `secrets/api-admin.key`, unless hub.yaml sets one itself;
- each supplier's keys, `secrets/api-{id}.key` and any `secrets/api-{id}.{n}.key` (the
  first is made when it has none), unless hub.yaml sets `api_key_hash` or `api_key_file` for
  it. Every key file listed works: a new one (`keyop hub acl --add-key ID`) can be handed out
  while the old one still works; deleting a key file and running `keyop hub acl` again
  revokes that key at the hub's next start.

Key files are made with O_EXCL and mode 0600 and never overwritten; api-keys.yaml (mode 0600)
is replaced whole on every run.
"""

from __future__ import annotations

import re
from pathlib import Path

from hub.config import HubConfig, hash_key

FILE = "api-keys.yaml"
ADMIN_FILE = "api-admin.key"
_EXTRA = re.compile(r"^api-(?P<id>[a-z0-9-]+)\.(?P<n>[0-9]{1,6})\.key$")


def key_files(out: Path, supplier: str) -> list[Path]:
    """A supplier's key files: the first (made when it has none), then the added ones by
    number."""
    folder = out / "secrets"
    extra = sorted((int(m["n"]), p) for p in folder.glob(f"api-{supplier}.*.key")
                   if (m := _EXTRA.match(p.name)) and m["id"] == supplier) \
        if folder.is_dir() else []
    first = folder / f"api-{supplier}.key"
    return [*([first] if first.exists() or not extra else []), *(p for _, p in extra)]


def add_key(out: Path, supplier: str) -> Path:
    """The path of one more key for `supplier` (the next number), to be generated."""
    files = key_files(out, supplier)
    numbers = [int(m["n"]) for p in files[1:] if (m := _EXTRA.match(p.name))]
    return out / "secrets" / f"api-{supplier}.{max(numbers, default=1) + 1}.key"


def write(config: HubConfig, out: Path, add: tuple[str, ...] = ()) -> list[Path]:
    """Make the missing key files (and one more for each supplier in `add`), write
    api-keys.yaml; returns the key files generated."""
    # hub.acl's secret files (O_EXCL, 0600, checked on reading): imported here, as acl
    # imports this module.
    from hub.acl import _secret_for, _write_private

    generated: list[Path] = []

    def hashes(paths: list[Path]) -> list[str]:
        found = []
        for path in paths:
            key, new = _secret_for(path)
            if new:
                generated.append(path)
            found.append(hash_key(key))
        return found

    lines = ["# API key hashes, written by `keyop hub acl` (do not edit: it is rewritten).",
             "# hub.yaml includes it: `include: [api-keys.yaml]` (relative to hub.yaml).",
             "# The keys are in secrets/: api-admin.key is the operator's, api-<id>*.key each",
             "# supplier's (hand each its own). Several keys of one account all work."]
    api = config.api
    if not (api.admin_key_hash or api.admin_key_file or api.admin_key_hashes):
        admin = hashes([out / "secrets" / ADMIN_FILE])
        lines += ["api:", f"  admin_key_hashes: {_list(admin)}"]
    suppliers = []
    for supplier, rules in config.suppliers.items():
        if rules.api_key_hash or rules.api_key_file or rules.api_key_hashes:
            continue
        files = key_files(out, supplier)
        if supplier in add:
            files.append(add_key(out, supplier))
        suppliers.append(f"  {supplier}:\n    api_key_hashes: {_list(hashes(files))}")
    lines += ["suppliers:", *suppliers] if suppliers else []
    _write_private(out / FILE, "\n".join(lines) + "\n")
    return generated


def _list(hashes: list[str]) -> str:
    return "[" + ", ".join(f'"{h}"' for h in hashes) + "]"

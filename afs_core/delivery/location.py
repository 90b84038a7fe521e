"""Where the store lives: a place that works on a laptop, in a container and on a cluster.

``AFS_HOME`` when the user set it (one that cannot be used is their mistake, shown
at start-up). Otherwise the first usable of the per-user data directory and a
private directory under the system's temporary directory; when none is usable the
engine delivers from memory and says it is not durable. A directory on a network
or cluster filesystem gets one store file per host, so two machines never open
the same SQLite file.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

DB_NAME = "afs.db"
MOUNT_TABLE = "/proc/self/mountinfo"

# Filesystems whose files other machines see too (``type`` or ``type.subtype`` as the
# mount table names them). SQLite's WAL needs memory shared on one host, and its
# locks are not to be trusted across hosts on any of these.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "mmfs", "cifs", "smb3", "smbfs", "beegfs", "fhgfs", "ceph", "glusterfs",
    "panfs", "wekafs", "afs", "auristorfs", "ocfs2", "gfs2", "orangefs", "pvfs2", "9p",
})


class StoreLocation(NamedTuple):
    """Where the store goes, and what a person should be told about it.

    ``path`` is None when no place could hold one; ``reason`` then says why.
    """

    path: Path | None
    explicit: bool = False
    network_fs: str | None = None
    reason: str = ""

    @property
    def directory(self) -> Path | None:
        return None if self.path is None else self.path.parent


def _unescape(field: str) -> str:
    # The mount table writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mounts(table: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of ``/proc/self/mountinfo`` or
    ``/proc/mounts`` (either format)."""
    mounts = []
    for line in table.splitlines():
        fields = line.split()
        if " - " in line and len(fields) >= 7:  # mountinfo: ... mount point ... - type source options
            after = line.split(" - ", 1)[1].split()
            if after:
                mounts.append((_unescape(fields[4]), after[0]))
        elif len(fields) >= 3:  # mounts: source, mount point, type, options
            mounts.append((_unescape(fields[1]), fields[2]))
    return mounts


def filesystem_type(path: str | os.PathLike[str], table: str) -> str | None:
    """The type of the filesystem ``path`` is on, by the mount table's longest
    matching mount point (the last one wins when several are mounted there)."""
    target = os.path.abspath(os.fspath(path))
    best: tuple[int, str] | None = None
    for mount_point, fs_type in _mounts(table):
        point = mount_point.rstrip("/") or "/"
        inside = target == point or point == "/" or target.startswith(point + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fs_type)
    return None if best is None else best[1]


def network_filesystem(path: str | os.PathLike[str], table: str | None = None) -> str | None:
    """The filesystem type when ``path`` is on a network or cluster filesystem, else None."""
    if table is None:
        try:
            with open(MOUNT_TABLE, encoding="utf-8", errors="replace") as handle:
                table = handle.read()
        except OSError:
            return None  # not Linux, or no /proc: treated as local
    fs_type = filesystem_type(_resolved(Path(path)), table)
    if fs_type is None:
        return None
    base = fs_type.removeprefix("fuse.")
    return fs_type if base in NETWORK_FILESYSTEMS or base.split(".")[0] in NETWORK_FILESYSTEMS else None


def _resolved(path: Path) -> Path:
    """``path`` with the symbolic links of its existing part followed (a home that is a
    link into /gpfs is on GPFS); the part not created yet is kept as written."""
    path = path.absolute()
    missing: list[str] = []
    while not path.exists() and path.parent != path:
        missing.insert(0, path.name)
        path = path.parent
    return path.resolve().joinpath(*missing)


def store_file(directory: Path, host: str, network_fs: str | None) -> Path:
    """``afs.db``, or ``afs-<host>.db`` on a filesystem several hosts share."""
    if network_fs is None:
        return directory / DB_NAME
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host) or "host"
    return directory / f"afs-{safe}.db"


def data_directories(env: Mapping[str, str]) -> list[Path]:
    """The per-user places a store may go when ``AFS_HOME`` is not set, best first."""
    candidates: list[Path] = []
    try:
        home: Path | None = Path.home()
    except (RuntimeError, KeyError, OSError):  # no HOME and no password entry
        home = None
    if sys.platform == "darwin" and home is not None:
        candidates.append(home / "Library" / "Application Support" / "afs")
    elif sys.platform.startswith("win"):
        local = env.get("LOCALAPPDATA") or (str(home / "AppData" / "Local") if home else "")
        if local:
            candidates.append(Path(local) / "afs")
    else:
        xdg = env.get("XDG_DATA_HOME", "")
        if os.path.isabs(xdg):  # the XDG rules ignore a relative value
            candidates.append(Path(xdg) / "afs")
        if home is not None:
            candidates.append(home / ".local" / "share" / "afs")
    return candidates


def private_temp_directory() -> Path:
    """``<tmp>/afs-<uid>``, created 0700; refused when someone else owns it."""
    import tempfile  # only when no per-user data directory could be used

    uid = os.getuid() if hasattr(os, "getuid") else None
    directory = Path(tempfile.gettempdir()) / f"afs-{uid if uid is not None else os.getlogin()}"
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{directory} is not a directory")
    if uid is not None:
        if info.st_uid != uid:
            raise PermissionError(f"{directory} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            os.chmod(directory, 0o700)
    return directory

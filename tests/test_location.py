"""Where the store goes: the default places, and a file per host on shared filesystems."""

import sqlite3

import pytest

import afs_core.delivery.location as location_module
from afs_core.delivery.location import filesystem_type, network_filesystem
from afs_core.delivery.store import open_store
from afs_core.errors import ConfigurationError
from afs_core.source import host_name

# Lines as /proc/self/mountinfo shows them on cluster nodes and workstations.
MOUNTINFO = r"""
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
25 22 0:23 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw,inode64
812 22 0:52 / /home rw,relatime shared:405 - nfs4 fs01.cluster:/export/home rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.1.0.15,local_lock=none,addr=10.1.0.2
813 22 0:53 / /nfs3/data rw,relatime shared:406 - nfs nas:/vol/data rw,vers=3,rsize=65536,wsize=65536,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.1.0.3,mountvers=3,mountport=635,mountproto=udp,local_lock=none,addr=10.1.0.3
60 22 0:45 / /lustre/scratch rw,relatime shared:30 - lustre 10.2.0.1@o2ib:10.2.0.2@o2ib:/scratch rw,flock,lazystatfs,encrypt
95 22 0:50 / /gpfs/projects rw,relatime shared:50 - gpfs projects rw
120 22 0:60 / /mnt/team\040share rw,relatime shared:60 - cifs //nas.corp/team rw,vers=3.1.1,cache=strict,username=svc,uid=1000,noforceuid,gid=1000,noforcegid,addr=10.3.0.4,file_mode=0755,dir_mode=0755,soft,nounix,serverino,mapposix,rsize=4194304,wsize=4194304,bsize=1048576,echo_interval=60,actimeo=1
121 22 0:61 / /mnt/smb rw,relatime shared:61 - smb3 //nas.corp/smb rw,vers=3.0
32 22 0:69 / /mnt/beegfs rw,relatime shared:617 master:2 - beegfs beegfs_nodev rw,cfgFile=/etc/beegfs/beegfs-client.conf
140 812 0:70 / /home/alice/.cache rw,relatime shared:70 - tmpfs tmpfs rw,size=1048576k
150 22 0:80 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c
"""

# The same kind of lines as /proc/mounts shows them.
PROC_MOUNTS = r"""
/dev/sda1 / ext4 rw,relatime 0 0
fs01:/home /home nfs4 rw,relatime,vers=4.1 0 0
10.2.0.1@tcp:/lfs /lfs lustre rw,flock 0 0
gpfs1 /gpfs gpfs rw,relatime 0 0
//nas/share /mnt/nas cifs rw,vers=3.0 0 0
beegfs_nodev /beegfs beegfs rw,cfgFile=/etc/beegfs/beegfs-client.conf 0 0
"""


@pytest.mark.parametrize("path, expected", [
    ("/home/alice/.local/share/afs", "nfs4"),
    ("/nfs3/data/runs", "nfs"),
    ("/lustre/scratch/alice/afs", "lustre"),
    ("/gpfs/projects/ml/afs", "gpfs"),
    ("/mnt/team share/afs", "cifs"),
    ("/mnt/smb/afs", "smb3"),
    ("/mnt/beegfs/alice", "beegfs"),
])
def test_network_and_cluster_filesystems_are_recognised_in_mountinfo(path, expected):
    assert network_filesystem(path, MOUNTINFO) == expected


@pytest.mark.parametrize("path", ["/root/.local/share/afs", "/dev/shm/afs", "/home/alice/.cache/afs",
                                  "/var/lib/docker/overlay2/abc/merged/afs", "/homework/afs"])
def test_local_filesystems_are_not(path):
    assert network_filesystem(path, MOUNTINFO) is None


@pytest.mark.parametrize("path, expected", [
    ("/home/bob/afs", "nfs4"), ("/lfs/bob", "lustre"), ("/gpfs/bob", "gpfs"), ("/mnt/nas/bob", "cifs"),
    ("/beegfs/bob", "beegfs"), ("/tmp/afs", None),
])
def test_the_proc_mounts_format_is_read_too(path, expected):
    assert network_filesystem(path, PROC_MOUNTS) == expected


def test_the_deepest_mount_point_wins():
    assert filesystem_type("/home/alice/.cache/x", MOUNTINFO) == "tmpfs"
    assert filesystem_type("/home/alice/x", MOUNTINFO) == "nfs4"


def test_a_store_on_a_shared_filesystem_is_a_file_per_host_without_wal(tmp_path, monkeypatch):
    table = tmp_path / "mountinfo"
    table.write_text(f"22 1 0:1 / / rw - ext4 /dev/sda1 rw\n812 22 0:52 / {tmp_path} rw - nfs4 fs:/home rw\n")
    monkeypatch.setattr(location_module, "MOUNT_TABLE", str(table))
    monkeypatch.setenv("AFS_HOME", str(tmp_path / "afs"))
    store = open_store()
    assert store.path == tmp_path / "afs" / f"afs-{host_name()}.db"
    assert store.location.network_fs == "nfs4"
    from afs_core.events import EventType, NotificationEvent

    store.enqueue(NotificationEvent(EventType.TRAINING_STARTED, "t", "m"), ["c"])
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not list((tmp_path / "afs").glob("*-wal")) and not list((tmp_path / "afs").glob("*-shm"))


@pytest.mark.parametrize("shared", [False, True])
def test_every_connection_to_a_store_has_its_settings(tmp_path, shared):
    """Each thread connects on its own; the settings go in with one script."""
    import threading

    from afs_core.delivery.store import Store

    store = Store(tmp_path / "afs.db", shared_filesystem=shared)
    expected = ({"journal_mode": "delete", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30000} if shared
                else {"journal_mode": "wal", "synchronous": 1, "wal_autocheckpoint": 256,
                      "journal_size_limit": 1048576, "foreign_keys": 1, "busy_timeout": 30000})
    got = {}

    def read():
        with store._read() as db:
            got.update({name: db.execute(f"PRAGMA {name}").fetchone()[0] for name in expected})

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(timeout=10)
    assert got == expected


def test_an_unusable_home_falls_back_to_a_private_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("AFS_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", "/proc/no-such-home")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    store = open_store()
    private = tmp_path / f"afs-{__import__('os').getuid()}"
    assert store.path == private / "afs.db" and store.durable
    assert oct(private.stat().st_mode & 0o777) == "0o700"


def test_xdg_data_home_comes_first(tmp_path, monkeypatch):
    monkeypatch.delenv("AFS_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert open_store().path == tmp_path / "xdg" / "afs" / "afs.db"


def test_a_private_directory_that_is_not_a_directory_is_refused(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("AFS_HOME")
    monkeypatch.setenv("HOME", "/proc/no-such-home")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    (tmp_path / f"afs-{os.getuid()}").write_text("someone put a file here")
    store = open_store()
    assert store.path is None and not store.durable
    assert "no place could hold the store" in store.location.reason and "not a directory" in store.location.reason


@pytest.mark.skipif(__import__("os").getuid() != 0, reason="giving a directory to another user needs root")
def test_a_private_directory_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("AFS_HOME")
    monkeypatch.setenv("HOME", "/proc/no-such-home")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    planted = tmp_path / f"afs-{os.getuid()}"
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)
    store = open_store()
    assert store.path is None and "belongs to another user" in store.location.reason
    assert list(planted.iterdir()) == []  # nothing of ours was written into it


def test_an_afs_home_the_user_set_that_cannot_be_used_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("AFS_HOME", "/proc/afs")
    with pytest.raises(ConfigurationError, match="AFS_HOME '/proc/afs' cannot hold the outbox"):
        open_store()

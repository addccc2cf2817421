"""etcd, one member per site, as processes of the platform: what must exist before a member
starts, and the names that tie a member to its files.

A member is an ordinary instance (``Kind.ETCD``, ``etcd@<site>``, built by
``desired.etcd_instance``), started, probed, restarted and re-adopted like every other.
What its start needs on disk is made here, so ``desired`` stays a pure function:

- the platform's CA, one certificate per member naming its address (server and peer),
  and the one client certificate every platform process uses with etcd;
- each member's data folder, ``<state>/etcd/<site>``, private to the platform's user.

All of it is made once and kept while current, so calling it before every start of a
member or an agent costs a few reads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from alwayson.data.layout import etcd_members
from alwayson.runtime.base import InstanceSpec
from alwayson.spec.models import PlatformSpec
from alwayson.store.etcd_types import EtcdError, EtcdUnavailable, MemberAdmin
from alwayson.store.members import Member
from alwayson.util.certs import CLIENT, TlsFiles, client_files, ensure_leaf, leaf_paths
from alwayson.util.errors import PermanentError

log = logging.getLogger("alwayson.consensus")

DEBIAN_ETCD = "/usr/bin/etcd"
"""Where Debian's ``etcd-server`` (installed by ``scripts/setup.sh``) puts the binary."""


def find_etcd() -> str:
    """The etcd binary, on PATH or else Debian's. Resolve it once per controller: it is
    part of every member's command line, so a different answer restarts the members."""
    return shutil.which("etcd") or DEBIAN_ETCD


def member_cert_name(site: str) -> str:
    return f"etcd-{site}"


def member_tls(state_dir: Path, site: str) -> TlsFiles:
    """Where the member of ``site`` finds its certificate (made by ``ensure_certificates``)."""
    return leaf_paths(state_dir, member_cert_name(site))


def cluster_token(spec: PlatformSpec) -> str:
    """Told to every member at the cluster's first start: two platforms never merge."""
    return f"alwayson-{spec.platform}"


def ensure_certificates(spec: PlatformSpec, state_dir: Path) -> dict[str, TlsFiles]:
    """The CA, one certificate per member (for its site's address) and the client's.

    Idempotent: a certificate that still names the member's address and is not about to
    expire is kept (the CA always is), so running members keep trusting each other.
    Returns the files by member name, and the client's under ``CLIENT``.
    """
    made = {
        member.name: ensure_leaf(
            state_dir, spec.platform, member_cert_name(member.name), [member.host]
        )
        for member in etcd_members(spec, state_dir)
    }
    made[CLIENT] = client_files(state_dir, spec.platform)
    return made


def ensure_data_dirs(spec: PlatformSpec, state_dir: Path) -> None:
    """Every member's data folder, mode 0700 (etcd warns about a data folder other users
    can read: it holds every key). Existing data is left as it is."""
    for member in etcd_members(spec, state_dir):
        member.data_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        member.data_dir.mkdir(exist_ok=True, mode=0o700)
        if member.data_dir.stat().st_mode & 0o777 != 0o700:
            os.chmod(member.data_dir, 0o700)


def membership_path(state_dir: Path) -> Path:
    return state_dir / "etcd" / "membership.json"


def membership_of(spec: PlatformSpec, state_dir: Path) -> dict[str, str]:
    """The cluster a spec asks for: each member's name and peer URL."""
    return {m.name: m.peer_url for m in etcd_members(spec, state_dir)}


def recorded_membership(state_dir: Path) -> dict[str, str]:
    """The cluster the members were first started as (empty before that)."""
    try:
        found: dict[str, str] = json.loads(membership_path(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    return found


def record_membership(spec: PlatformSpec, state_dir: Path) -> None:
    """Written once, at the cluster's first start: an apply is checked against it."""
    path = membership_path(state_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps(membership_of(spec, state_dir), indent=1))


def reshaping(recorded: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    """How ``wanted`` would change a running cluster's membership (empty: it would not).

    Members are started with a fixed initial cluster; a member added, removed or moved to
    another address by an apply would start against data that names other peers (etcd
    refuses, or worse, splits). Changing membership needs etcd's member add/remove, one
    member at a time, which alwayson does not do yet."""
    if not recorded:
        return []
    changes = [f"site {name} added" for name in sorted(set(wanted) - set(recorded))]
    changes += [f"site {name} removed" for name in sorted(set(recorded) - set(wanted))]
    changes += [
        f"site {name}'s member moves from {recorded[name]} to {wanted[name]}"
        for name in sorted(set(recorded) & set(wanted))
        if recorded[name] != wanted[name]
    ]
    return changes


def prepare_members(spec: PlatformSpec, state_dir: Path) -> None:
    """What must exist before a member (or a process that talks to the members) starts.

    A failure is a ``PermanentError`` saying what could not be made, so the start that
    needed it is reported like any start that cannot happen."""
    try:
        ensure_certificates(spec, state_dir)
        ensure_data_dirs(spec, state_dir)
        record_membership(spec, state_dir)
    except (OSError, ValueError) as exc:
        raise PermanentError(
            f"etcd members: cannot make their certificates or data folders under {state_dir}: {exc}"
        ) from exc


# -- a member whose data folder was lost -------------------------------------------------

STATE_FLAG = "--initial-cluster-state="
MEMBERSHIP_DEADLINE = 3.0


def joining_marker(member: Member) -> Path:
    """Written once the member was added back to the cluster, until it has data again."""
    return member.data_dir.parent / f"{member.name}.joining"


async def join_state(admin: MemberAdmin, member: Member) -> tuple[str, str | None]:
    """How ``member`` must start: ``("new", None)``, or ``("existing", what was done)``
    when its data folder is empty although the cluster knows it as a member that ran.

    etcd reads ``--initial-cluster-state`` only with an empty data folder. ``new`` is right
    for a cluster's first start. A member that ran before and lost its data must not start
    as ``new`` (it would form a cluster of its own, or be refused as a stranger): it is
    removed from the cluster and added again, then started as ``existing`` and receives
    everything from the others. Asking needs the others' quorum; with none (the cluster's
    first start, or the whole cluster down) the member starts as its data say."""
    marker = joining_marker(member)
    if (member.data_dir / "member").exists():
        marker.unlink(missing_ok=True)
        return "new", None
    if marker.exists():  # added back earlier; its first start as existing did not stick
        return "existing", None
    try:
        listed = await admin.member_list(timeout=MEMBERSHIP_DEADLINE)
    except (EtcdUnavailable, EtcdError):
        return "new", None
    known = next(
        (m for m in listed if m.name == member.name or member.peer_url in m.peer_urls), None
    )
    if known is not None and not known.name:
        return "new", None  # listed but never started: the cluster's first start
    try:
        if known is not None:
            await admin.member_remove(known.id, timeout=MEMBERSHIP_DEADLINE)
        await admin.member_add([member.peer_url], timeout=MEMBERSHIP_DEADLINE)
    except (EtcdUnavailable, EtcdError) as exc:
        raise PermanentError(
            f"etcd member {member.name} lost its data folder ({member.data_dir}) and could "
            f"not be added back to the cluster: {exc}"
        ) from exc
    marker.write_text(json.dumps({"removed": known.id if known else None}))
    done = (
        f"etcd member {member.name} had lost its data folder ({member.data_dir}): removed "
        "from the cluster, added again, and started to copy everything from the others"
    )
    log.warning("%s", done)
    return "existing", done


async def start_member(
    spec: InstanceSpec,
    platform: PlatformSpec,
    state_dir: Path,
    cluster: Callable[[PlatformSpec], MemberAdmin],
) -> tuple[InstanceSpec, str | None]:
    """The member's command line for this start, and what was done to the cluster (None:
    nothing). ``cluster`` is asked for a client only when the member's data are missing."""
    member = next(m for m in etcd_members(platform, state_dir) if m.name == spec.site)
    if (member.data_dir / "member").exists():
        joining_marker(member).unlink(missing_ok=True)
        return spec, None
    state, done = await join_state(cluster(platform), member)
    return with_join_state(spec, state), done


def with_join_state(spec: InstanceSpec, state: str) -> InstanceSpec:
    """The member's command line with ``state`` (not part of what identifies the process:
    ``InstanceSpec.template_hash`` leaves the flag out)."""
    argv = [f"{STATE_FLAG}{state}" if a.startswith(STATE_FLAG) else a for a in spec.argv]
    return replace(spec, argv=argv)


def raft_site(spec: PlatformSpec) -> str:
    """Where etcd's raft leader should be: the first database's standby site (the workload
    site that is not its ``primary_site``), else the witness.

    Losing the member that leads raft costs an election (1 to 2 s without a raft leader),
    and etcd's new leader extends every lease by its whole ttl (it cannot know how long the
    old leader was gone). If that member was in the primary's site, the database's lease
    then expires one ttl late and a site loss takes 11 to 15 s instead of under 10; if it
    was the witness's, the primary's renewals wait through the election. With raft led
    from the standby's site, losing the primary's site or the witness costs no election
    (docs/DATA-DESIGN.md, "RTO with etcd's leader in the lost site")."""
    workload = [s.name for s in spec.workload_sites]
    if spec.databases and len(workload) == 2:
        primary = spec.databases[0].primary_site
        return next((s for s in workload if s != primary), primary)
    return next(s.name for s in spec.sites if s.witness)


async def place_raft_leader(spec: PlatformSpec, state_dir: Path, admin: MemberAdmin) -> str | None:
    """Move etcd's raft leadership to :func:`raft_site`'s member; what was done (None:
    nothing). Only before any database agent runs (``up`` of a stopped platform): a move
    changes raft's term, which costs a running primary one lease renewal, and one such
    move in CI fenced the primary, so a running platform is never rearranged."""
    site = raft_site(spec)
    member = next(m for m in etcd_members(spec, state_dir) if m.name == site)
    try:
        return await admin.move_leader(member.endpoint, timeout=MEMBERSHIP_DEADLINE)
    except (EtcdUnavailable, EtcdError) as exc:
        log.warning("etcd's raft leader stays where it is: %s", exc)
        return None

"""Checks an apply makes before it changes anything: addresses free, workloads and etcd
runnable."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from alwayson.control.desired import listen_addresses
from alwayson.runtime.base import InstanceSpec, InstanceStatus, Kind
from alwayson.spec.loading import LoadedSpec
from alwayson.util.addresses import port_is_free, split_hostport
from alwayson.util.errors import PermanentError

UserCheck = Callable[[str | None, str, str], str | None]
AddressCheck = Callable[[str, int], bool]
ProgramCheck = Callable[[str], bool]


def is_program(path: str) -> bool:
    """``path`` is a file this process may execute."""
    return os.path.isfile(path) and os.access(path, os.X_OK)


def preflight(
    loaded: LoadedSpec,
    new: Mapping[str, InstanceSpec],
    running: Sequence[InstanceStatus],
    user: str | None,
    can_run: UserCheck,
    address_free: AddressCheck = port_is_free,
    is_runnable: ProgramCheck = is_program,
    reshaped: Sequence[str] = (),
) -> None:
    """Raise PermanentError (nothing changed) if ``new`` cannot start as it stands.
    ``reshaped``: how the spec would change the etcd cluster's membership (refused)."""
    if reshaped and any(inst.kind is Kind.ETCD for inst in new.values()):
        raise PermanentError(
            f"{loaded.path}: sites: this change would reshape the etcd cluster ("
            + "; ".join(reshaped)
            + "). Its members were started as one cluster and alwayson cannot yet add, "
            "remove or move a member safely; keep the sites and their subnets as they are. "
            "Nothing was changed."
        )
    check_addresses(loaded, new, [s.spec for s in running], address_free)
    current = {s.spec.id for s in running}
    members = sorted(i for i, inst in new.items() if inst.kind is Kind.ETCD and i not in current)
    if members and not is_runnable(new[members[0]].argv[0]):
        raise PermanentError(
            f"{loaded.path}: databases: their etcd members ({', '.join(members)}) need the etcd "
            f"program, and {new[members[0]].argv[0]} is not one this machine can run. Install "
            "Debian's etcd-server (`bash scripts/setup.sh`, or `apt-get install etcd-server`) "
            "or put etcd on the controller's PATH; nothing was changed."
        )
    workloads = [i for i in new.values() if i.kind is Kind.WORKLOAD]
    if workloads:
        problem = can_run(user, workloads[0].argv[0], workloads[0].cwd)
        if problem:
            raise PermanentError(f"{loaded.path}: runtime.user: {problem}")


def check_addresses(
    loaded: LoadedSpec,
    new: Mapping[str, InstanceSpec],
    running: Sequence[InstanceSpec],
    address_free: AddressCheck = port_is_free,
) -> None:
    """PermanentError naming every address of ``new`` that another process holds (one
    of ``running``, this platform's own, may hold it); nothing was changed."""
    current = {s.id: s for s in running}
    mine = {a for s in running for a in listen_addresses(s)}
    taken: list[str] = []
    for ident, inst in new.items():
        was = current.get(ident)
        if was is not None and listen_addresses(was) == listen_addresses(inst):
            continue
        for address in listen_addresses(inst):
            host, port = split_hostport(address)
            if address not in mine and not address_free(host, port):
                taken.append(f"{address} ({field_of(inst)})")
    if taken:
        raise PermanentError(
            f"{loaded.path}: address already in use by another process: "
            + ", ".join(sorted(set(taken)))
            + ". Stop that process or change the port (or subnet) in the spec; nothing was "
            "changed."
        )


def field_of(inst: InstanceSpec) -> str:
    if inst.kind is Kind.FRONTDOOR:
        return "front_door.listen / gateway.admin_port"
    if inst.kind is Kind.GATEWAY:
        return "gateway.port / gateway.admin_port"
    if inst.kind is Kind.ETCD:
        return f"etcd member {inst.id}, an address of sites.{inst.site}.subnet"
    if inst.kind is Kind.AGENT:
        return f"database agent {inst.id}, an address of sites.{inst.site}.subnet"
    if inst.kind is Kind.CONTROLLER:
        return f"site controller {inst.id}: controller.api's port, on sites.{inst.site}'s subnet"
    return f"services.{inst.service}.port"

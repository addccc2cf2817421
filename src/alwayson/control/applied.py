"""The applied spec and what varies from it: drift, the autoscaler's counts, address slots.

``Applied`` is the desired state as the store keeps it (``desired`` and ``addressing``
keys) and the one place the instances that should run are computed from it, cached until
something they depend on changes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from alwayson.control.consensus import find_etcd, prepare_members
from alwayson.control.desired import (
    Context,
    Variant,
    agent_config_path,
    agent_config_text,
    desired_instances,
)
from alwayson.control.secrets import load as kept_secrets
from alwayson.control.state import replica_counts
from alwayson.data.layout import secrets_of
from alwayson.runtime.base import InstanceSpec, Kind
from alwayson.spec.loading import LoadedSpec, load_spec_text
from alwayson.spec.models import PlatformSpec
from alwayson.spec.planning import Overrides
from alwayson.store.base import StateStore
from alwayson.util.credentials import write_private
from alwayson.util.errors import NotFoundError

DESIRED_KEY = "desired"
SLOTS_KEY = "addressing"
NOTHING_APPLIED = "nothing is applied yet; run `alwayson up` first"

VariantsOf = Callable[[PlatformSpec], Mapping[str, list[Variant]]]


class Applied:
    def __init__(self, state_dir: Path, default_user: str | None) -> None:
        self.state_dir = state_dir
        self.default_user = default_user
        self.loaded: LoadedSpec | None = None
        self.overrides: Overrides = {}
        self.autoscaled: Overrides = {}
        self.slots: dict[str, int] = {}
        self._cache: tuple[object, dict[str, InstanceSpec]] | None = None
        self.secrets_version = 0
        """Bumped when apply keeps new secret values: instances that use them change."""
        self.etcd_binary = find_etcd()

    # ------------------------------------------------------------ the SpecReader port

    def spec_or_none(self) -> PlatformSpec | None:
        return self.loaded.spec if self.loaded else None

    def spec(self) -> PlatformSpec:
        if self.loaded is None:
            raise NotFoundError(NOTHING_APPLIED)
        return self.loaded.spec

    def spec_folder(self) -> Path:
        if self.loaded is None:
            raise NotFoundError(NOTHING_APPLIED)
        return self.loaded.folder

    # ------------------------------------------------------------ what should run

    def counts(self) -> Overrides:
        """Replica counts that differ from the spec (``state.replica_counts``)."""
        if self.loaded is None:
            return {}
        return replica_counts(self.loaded.spec, self.overrides, self.autoscaled)

    def user_of(self, loaded: LoadedSpec) -> str | None:
        return loaded.spec.runtime.user or self.default_user

    def context(
        self,
        loaded: LoadedSpec,
        slots: dict[str, int],
        secret_values: Mapping[str, str] | None = None,
    ) -> Context:
        """What the desired state depends on besides the spec; ``secret_values`` stands in
        for the kept secrets while apply checks values it has not kept yet."""
        passwords = secrets_of(self.state_dir, loaded.spec) if loaded.spec.databases else {}
        if secret_values is None:
            secret_values = kept_secrets(self.state_dir, loaded.spec) if loaded.spec.secrets else {}
        return Context(
            loaded.folder,
            self.state_dir,
            self.user_of(loaded),
            slots,
            passwords,
            etcd_binary=self.etcd_binary,
            secrets=secret_values,
        )

    def desired(
        self, variants_of: VariantsOf, release_key: Hashable, sites_down: Iterable[str]
    ) -> dict[str, InstanceSpec]:
        """What should run; recomputed only when something it depends on changed. A site a
        drill holds down runs nothing until it is restored."""
        if self.loaded is None:
            return {}
        counts = self.counts()
        down = frozenset(sites_down)
        key = (
            self.loaded,
            tuple(sorted(counts.items())),
            tuple(self.slots.items()),
            release_key,
            tuple(sorted(down)),
            self.secrets_version,
        )
        if self._cache is None or self._cache[0] != key:
            ctx = self.context(self.loaded, self.slots)
            variants = dict(variants_of(self.loaded.spec))
            every = desired_instances(self.loaded.spec, counts, ctx, variants)
            self._cache = (key, {k: v for k, v in every.items() if v.site not in down})
        return self._cache[1]

    def prepare_start(self, spec: InstanceSpec) -> None:
        """What a process needs on disk before it starts: the etcd members their
        certificates and data folders, the agents the client certificate and their
        configuration. ``PermanentError`` when it cannot be made."""
        if self.loaded is None:
            return
        if spec.kind in (Kind.ETCD, Kind.AGENT):
            prepare_members(self.loaded.spec, self.state_dir)
        self.write_agent_config(spec)

    def write_agent_config(self, spec: InstanceSpec) -> None:
        """A database agent reads its configuration (with secrets, 0600) when it starts."""
        if spec.kind is Kind.AGENT and self.loaded is not None:
            ctx = self.context(self.loaded, self.slots)
            write_private(
                agent_config_path(self.state_dir, spec.site),
                agent_config_text(self.loaded.spec, spec.site, ctx),
            )

    # ------------------------------------------------------------ kept in the store

    async def load(self, store: StateStore) -> Mapping[str, Any]:
        """Read what was applied; returns the releases' saved state."""
        record = await store.get(DESIRED_KEY)
        if record is not None and "slots" in record.value:
            kept = record.value["slots"]
        else:  # written by an older alwayson, beside the record
            slots = await store.get(SLOTS_KEY)
            kept = slots.value if slots else {}
        self.slots = {k: int(v) for k, v in kept.items()}
        if record is None:
            return {}
        value = record.value
        self.loaded = load_spec_text(value["text"], Path(value["path"]), check_commands=False)
        self.overrides = {(s, site): int(n) for s, site, n in value.get("overrides", [])}
        self.autoscaled = {(s, site): int(n) for s, site, n in value.get("autoscaled", [])}
        releases: Mapping[str, Any] = value.get("releases", {})
        return releases

    async def save(self, store: StateStore, releases: Mapping[str, Any], now: float) -> None:
        if self.loaded is None:
            await store.delete(DESIRED_KEY)
            return
        await store.put(
            DESIRED_KEY,
            {
                "text": self.loaded.text,
                "path": str(self.loaded.path),
                "overrides": [[s, site, n] for (s, site), n in sorted(self.overrides.items())],
                "autoscaled": [[s, site, n] for (s, site), n in sorted(self.autoscaled.items())],
                "releases": dict(releases),
                "applied_at": now,
                # One write with the spec: a leader that loses its term between two writes
                # must not leave a spec without the addresses its instances were given.
                "slots": dict(self.slots),
            },
        )

    def forget(self) -> None:
        """``alwayson down``: nothing is applied any more."""
        self.loaded = None
        self.overrides = {}
        self.autoscaled = {}

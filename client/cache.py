"""KernelCacheClient: manifests and binaries from the service, verified and mirrored locally.

    client = KernelCacheClient("http://cache:8000", token=...)
    manifest = client.get_or_build(spec)          # a one-line progress on stderr while the service builds
    kernels = client.kernels(spec, torch.device("cuda"))   # a flexsn_core KernelSet

Every blob is checked against its sha256 before it is stored or used; a
mismatch is fetched once more and then reported (IntegrityError), never
loaded. The local mirror (``$FLEXSN_CACHE_DIR/artifacts``, the same store the
local Triton backend uses) keeps what was fetched, so a node that saw a kernel
works without the service. Nothing received from the service is executed: GPU
processes load binaries, interpreter processes regenerate the source themselves
and compare its sha256 with the manifest's.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flexsn_core.counters import bump
from flexsn_core.errors import ArtifactError, BuildFailedError, CacheUnavailableError, IntegrityError
from flexsn_core.local import LocalStore, local_target
from flexsn_core.manifest import TuningChoice, restrict_targets, targets_of
from flexsn_core.runtime import KernelSet
from flexsn_core.spec import KernelSpec
from flexsn_core.store import sha256_hex

from .errors import BuildUnknownError
from .settings import ClientSettings

if TYPE_CHECKING:  # httpx (through .api) is imported when the service is first called, not on a local hit
    from .api import ServiceAPI

__all__ = ["KernelCacheClient"]

logger = logging.getLogger("flexsn_client")

_pools: dict[tuple[str, str | None], ServiceAPI] = {}
_pools_lock = threading.Lock()


def shared_api(url: str, token: str | None) -> ServiceAPI:
    """One connection pool (and one view of the service's availability) per (service, token) per process."""
    from .api import ServiceAPI

    key = (url.rstrip("/"), token)
    with _pools_lock:
        api = _pools.get(key)
        if api is None:
            settings = ClientSettings()
            api = _pools[key] = ServiceAPI(
                url, token, unavailable_s=settings.retry_after_s, build_wait_s=settings.build_wait_s
            )
        return api


def _targets_for(device: torch.device | None) -> list[str]:
    if device is not None and device.type == "cuda":
        return [local_target(device)]
    return []


def _only_targets(manifest: dict[str, Any], targets: list[str]) -> dict[str, Any]:
    """The manifest with the binaries (and tuned choices) of ``targets`` only (all of them if empty)."""
    return restrict_targets(manifest, targets) if targets else manifest


def _has_targets(manifest: dict[str, Any], targets: list[str]) -> bool:
    return set(targets) <= targets_of(manifest)


def _same_key(spec: KernelSpec, body: dict[str, Any], url: str) -> None:
    """The service names the spec as this process does; else its versions differ from ours."""
    key = body.get("key")
    if key is not None and key != spec.key:
        raise ArtifactError(
            f"the kernel cache at {url} keys {spec.entry} as {str(key)[:16]}…, this process as {spec.key[:16]}…: "
            "it runs another torch, Triton or codegen version (the spec key hashes them); its kernels do not "
            f"fit this process (service manifest: codegen {body.get('codegen_version', '?')}, "
            f"Triton {body.get('triton_version', '?')})"
        )


class KernelCacheClient:
    """Fetches, verifies and mirrors kernel artifacts.

    ``url``/``token``/``local_dir`` default to ``FLEXSN_CACHE_URL``,
    ``FLEXSN_CACHE_TOKEN`` and ``FLEXSN_CACHE_DIR``. Without a URL the client
    serves from the local mirror only.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        local_dir: str | Path | None = None,
        *,
        api: ServiceAPI | None = None,
    ) -> None:
        settings = ClientSettings()
        self.url = url or settings.url
        self.token = token if token is not None else settings.token
        root = Path(local_dir) if local_dir is not None else settings.cache_dir()
        self.mirror = LocalStore(root / "artifacts")
        self._api = api

    @property
    def api(self) -> ServiceAPI | None:
        """The service's API, None without a URL. Made on first use: a warm node whose mirror has
        every kernel never imports the HTTP stack (about 0.2 s of a warm start)."""
        if self._api is None and self.url:
            self._api = shared_api(self.url, self.token)
        return self._api

    # ------------------------------------------------------------ blobs
    def _require_api(self) -> ServiceAPI:
        if self.api is None:
            raise CacheUnavailableError(
                "no kernel cache URL configured (FLEXSN_CACHE_URL or cache_url=...) and the local mirror "
                "does not have this kernel"
            )
        return self.api

    def fetch_blob(self, sha: str) -> bytes:
        """A verified blob: from the mirror, else from the service (re-fetched once on a mismatch)."""
        mirrored = self.mirror.read_blob(sha)  # re-hashed; a corrupt copy is dropped and fetched again
        if mirrored is not None:
            return mirrored
        api = self._require_api()
        for attempt in (1, 2):
            data = api.get_blob(sha)
            if sha256_hex(data) == sha:
                self.mirror.put_blob(sha, data)
                return data
            logger.warning("blob %s… from %s failed its sha256 check (attempt %d)", sha[:16], api.url, attempt)
        raise IntegrityError(
            f"blob {sha[:16]}… from {api.url} does not match its sha256 twice; refusing to use it. "
            "Run `flexsn-cache verify --repair` on the service's store"
        )

    def _mirror(self, manifest: dict[str, Any], targets: list[str]) -> dict[str, Any]:
        """Fetch (in parallel) and verify the blobs of ``targets``, store the filtered manifest."""
        kept = _only_targets(manifest, targets)
        shas = sorted({kept["source"]["sha256"], *(b["sha256"] for b in kept["binaries"])})
        missing = [sha for sha in shas if not self.mirror.has_blob(sha)]
        if len(missing) > 1 and self.api is not None:
            # One round trip for all of them; each member is re-hashed before it is kept.
            for sha, data in self.api.get_bundle(kept["key"], targets).items():
                if sha in missing and sha256_hex(data) == sha:
                    self.mirror.put_blob(sha, data)
            missing = [sha for sha in missing if not self.mirror.has_blob(sha)]
        if missing:  # absent from the bundle or corrupt in it: one by one (re-fetched once on a mismatch)
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                list(pool.map(self.fetch_blob, missing))
        # merged with what the mirror has (other targets, tuned choices) under the key's lock
        return self.mirror.merge_manifest(kept)

    # ------------------------------------------------------------ manifests
    def get(self, spec: KernelSpec, targets: list[str] | None = None) -> dict[str, Any] | None:
        """The artifact of ``spec`` with binaries for ``targets``, or None if the service lacks it."""
        targets = list(targets or [])
        local = self.mirror.get_manifest(spec.key)
        if local is not None and _has_targets(local, targets):
            bump("local_hits")
            return local
        manifest = self._require_api().get_manifest(spec.key)
        if manifest is None or not _has_targets(manifest, targets):
            bump("remote_misses")
            return None
        bump("remote_hits")
        return self._mirror(manifest, targets)

    def get_or_build(
        self,
        spec: KernelSpec,
        targets: list[str] | None = None,
        *,
        wait: bool = True,
        progress: bool | None | Callable[[dict[str, Any]], None] = None,
    ) -> dict[str, Any] | None:
        """Like :meth:`get`, but asks the service to build what it lacks.

        With ``wait=False`` returns None while the build runs. While it waits on
        a build: ``progress=None`` draws a one-line progress on stderr as
        ``FLEXSN_CACHE_PROGRESS`` says (default: only when stderr is a terminal,
        so batch jobs stay silent), ``True`` always, ``False`` never; or pass a
        callback taking the build status.
        """
        found = self.get(spec, targets)
        if found is not None:
            return found
        api = self._require_api()
        code, body = api.request_kernels(spec, targets or None)
        _same_key(spec, body, api.url)
        if code == 202:
            if not wait:
                return None
            self._wait_for(spec, targets, body["build_id"], progress, f"{spec.entry} {spec.key[:8]}")
            manifest = api.get_manifest(spec.key)
            if manifest is None:
                raise BuildFailedError(f"the build of {spec.key[:16]}… succeeded but its manifest is gone")
        else:
            manifest = body
        return self._mirror(manifest, list(targets or []))

    def _wait_for(
        self,
        spec: KernelSpec,
        targets: list[str] | None,
        build_id: str,
        progress: bool | None | Callable[[dict[str, Any]], None],
        what: str,
    ) -> None:
        """Wait for the build of ``spec``: poll ``build_id``; where the service polled does not
        know it (build records are per process: a load balancer or several HTTP workers sent the
        poll elsewhere), ask for the spec again with ``wait=true``, which joins the build
        wherever it runs (one build per spec across replicas and workers)."""
        try:
            self._wait(build_id, progress, what)
            return
        except BuildUnknownError as exc:
            logger.info("%s; waiting on the spec instead", exc)
        api = self._require_api()
        deadline = time.monotonic() + api.build_wait_s
        while True:
            code, _ = api.request_kernels(spec, targets or None, wait=True)  # a failed build raises
            if code == 200:
                return
            if time.monotonic() > deadline:
                raise CacheUnavailableError(
                    f"the kernel cache at {api.url} did not finish building {what} within {api.build_wait_s:g} s; "
                    "FLEXSN_CACHE_BUILD_WAIT_S sets the limit"
                )

    def _wait(self, build_id: str, progress: bool | None | Callable[[dict[str, Any]], None], what: str) -> None:
        api = self._require_api()
        from .progress import build_line, progress_console  # rich: only while waiting on a build

        if callable(progress):
            api.wait_for_build(build_id, on_progress=progress)
            return
        console = progress_console(None if progress is None else ("always" if progress else "never"))
        with build_line(console, what) as show:
            api.wait_for_build(build_id, on_progress=show)

    def prefetch(
        self,
        specs: Iterable[KernelSpec],
        targets: list[str] | None = None,
        *,
        progress: Callable[[KernelSpec, str, dict[str, Any] | None], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Fetch (building where needed) many specs: all builds are requested before waiting on any.

        ``progress(spec, event, status)`` is told ``cached`` (no build needed),
        ``building`` (with each build status polled, from several threads) and
        ``ready`` (in the mirror).
        """
        specs = list(specs)
        note = progress or (lambda spec, event, status: None)
        pending: list[tuple[KernelSpec, str]] = []
        for spec in specs:
            if self.get(spec, targets) is None:
                code, body = self._require_api().request_kernels(spec, targets or None)
                if code == 202:
                    pending.append((spec, body["build_id"]))
                    note(spec, "building", body)
                    continue
            note(spec, "cached", None)
        if pending:
            # The service runs the builds side by side: poll them side by side, so every line moves.
            def wait(item: tuple[KernelSpec, str]) -> None:
                spec, build_id = item
                self._wait_for(spec, targets, build_id, lambda status: note(spec, "building", status), spec.entry)

            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(pending))) as pool:
                list(pool.map(wait, pending))
        results = []
        for spec in specs:
            manifest = self.get_or_build(spec, targets, progress=False)
            assert manifest is not None
            results.append(manifest)
            note(spec, "ready", None)
        return results

    # ------------------------------------------------------------ kernels
    def kernels(self, spec: KernelSpec, device: torch.device, *, build: bool = True) -> KernelSet:
        """A launchable KernelSet of ``spec`` for ``device`` (raises if unavailable)."""
        targets = _targets_for(device)
        manifest = self.get_or_build(spec, targets) if build else self.get(spec, targets)
        if manifest is None:
            raise BuildFailedError(f"the kernel cache has no kernels for {spec.entry} ({spec.key[:16]}…)")
        if device.type == "cpu":
            from flexsn_core.artifacts import generate  # code generation: only the interpreter needs it

            # Never run source received from the service: regenerate and compare.
            ks = KernelSet(manifest, generated=generate(spec))
        else:
            ks = KernelSet(manifest, fetch=self.fetch_blob)
        ks.on_tuned = lambda decision, _key=spec.key: self._tuned(_key, decision)
        return ks

    def _tuned(self, key: str, decision: dict[str, Any]) -> None:
        """Keep a tuning decision in the mirror and report it to the service (in the background)."""
        tuned = TuningChoice.of(decision)
        self.mirror.record_tuning(key, [tuned])
        if self.api is None:
            return
        choice = tuned.model_dump(exclude={"target"})

        def report() -> None:
            try:
                self.api.report_tuning(key, tuned.target, [choice])  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - reporting is best effort
                logger.debug("could not report tuning of %s… to the service: %s", key[:16], exc)

        threading.Thread(target=report, name="flexsn-tuning-report", daemon=True).start()

"""``emotion-agent engines build|list|verify|clean``: the per-device engine cache.

The settings come from the ``models`` section of the configuration (backend,
engine_cache_dir, max_batch, onnxruntime_threads, tensorrt_workspace_mb) and the
models from ``models.manifest`` (or the bundled manifest).
"""

import argparse
import json
from typing import Any, Callable, Dict, Optional, Set

from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from agent.config.models import ModelsConfig, SecondaryConfig
from agent.engine_runners import (
    engine_settings,
    prepare_configured_engines,
    secondary_settings,
    secondary_source,
)
from engines.cache import EngineCache, EntryStatus
from engines.manifest import LoadedManifest, ManifestError, ModelIntegrityError, load_manifest
from engines.prepare import (
    EngineEnvironment,
    EnginePreparationError,
    Toolchains,
    model_spec,
    prepare_engines,
)
from engines.progress import default_reporter


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    engines = subparsers.add_parser(
        "engines",
        help="build, list, verify and clean the per-device engine cache",
        description=(
            "Build, list, verify and clean the per-device engine cache (TensorRT plans, "
            "optimised ONNX Runtime graphs) in models.engine_cache_dir. See docs/engines.md."
        ),
    )
    actions = engines.add_subparsers(dest="engines_command", metavar="ACTION", title="actions")
    actions.required = True

    build = actions.add_parser(
        "build",
        help="build the engines the daemon will need (what is cached and intact is kept)",
        description=(
            "Build (or load from the cache) an engine for each model: by default the models "
            "the configuration selects (models.detector, models.landmarks, models.emotion, "
            "and pipeline.secondary.model when enabled). A model whose TensorRT build fails "
            "falls back to ONNX Runtime. Exit 1 if a model cannot run on any backend."
        ),
    )
    build.add_argument("models", nargs="*", metavar="MODEL", help="manifest model names")
    build.add_argument("--all", action="store_true", help="every model in the manifest")
    build.add_argument(
        "--force",
        action="store_true",
        help="rebuild even when an intact engine is cached (also retries a failed TensorRT build)",
    )
    common(build)
    build.set_defaults(handler=_build)

    listing = actions.add_parser(
        "list",
        help="list cached engines with their key, size, build time and validity",
        description=(
            "List the cache entries: model, backend, key fields, size, built at, valid "
            "(artifact intact) and current (its key matches this device and manifest)."
        ),
    )
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    common(listing)
    listing.set_defaults(handler=_list)

    verify = actions.add_parser(
        "verify",
        help="re-hash every cached engine; exit 1 if one is corrupt",
        description=(
            "Check every cache entry: its sidecar parses, and the artifact has the recorded "
            "size and sha256. A corrupt entry is rebuilt (never loaded) at the next start."
        ),
    )
    common(verify)
    verify.set_defaults(handler=_verify)

    clean = actions.add_parser(
        "clean",
        help="remove cached engines (all, or only stale ones)",
        description=(
            "Remove every cache entry and the TensorRT timing caches, or with --stale only "
            "the entries whose key matches no model of the manifest on this device. Entries "
            "being built right now are skipped."
        ),
    )
    clean.add_argument("--stale", action="store_true", help="only entries that are not current")
    common(clean)
    clean.set_defaults(handler=_clean)


def _manifest(models: ModelsConfig, ctx: CliContext) -> Optional[LoadedManifest]:
    try:
        return load_manifest(models.manifest)
    except ManifestError as exc:
        print(f"emotion-agent: {exc}", file=ctx.stderr)
        return None


def _environment(ctx: CliContext) -> EngineEnvironment:
    return EngineEnvironment(logger=ctx.logger)


def _build(args: argparse.Namespace, ctx: CliContext) -> int:
    config = ctx.load(writes=True).config
    manifest = _manifest(config.models, ctx)
    if manifest is None:
        return EXIT_FAILURE
    reporter = default_reporter(ctx.stderr, ctx.logger)
    try:
        if args.models or args.all:
            names = list(dict.fromkeys(args.models)) if args.models else manifest.names
            backends = prepare_engines(
                manifest,
                names,
                engine_settings(config.models),
                reporter=reporter,
                force=args.force,
                env=_environment(ctx),
            )
        else:  # what the daemon loads, the secondary stage's model included
            backends = prepare_configured_engines(
                config.models,
                config.pipeline.secondary,
                manifest,
                reporter=reporter,
                force=args.force,
                env=_environment(ctx),
            )
    except (EnginePreparationError, ManifestError) as exc:
        print(f"emotion-agent: {exc}", file=ctx.stderr)
        return EXIT_FAILURE
    printed: Set[str] = set()
    for name, backend in backends.items():
        how = "cached" if backend.info.cached else "built"
        where = backend.info.artifact or "not cached"
        print(f"{name}: {backend.kind} ({how}) {where}", file=ctx.stdout)
        for note in backend.info.notes:
            if note not in printed:  # e.g. "TensorRT is not usable here" applies to all
                printed.add(note)
                print(f"  note: {note}", file=ctx.stdout)
        backend.close()
    return EXIT_OK


def _current_digests(
    models: ModelsConfig, secondary: SecondaryConfig, manifest: LoadedManifest, ctx: CliContext
) -> Set[str]:
    """Digests of the keys every manifest model has on this device (primary and
    fallback), and the secondary stage's model when it is enabled (from its own
    manifest, with its own settings: ``clean --stale`` must not remove its engine)."""
    env = _environment(ctx)
    groups = [(manifest, manifest.names, engine_settings(models))]
    try:
        own = secondary_source(secondary, manifest)
    except ManifestError as exc:
        ctx.logger.warning("pipeline.secondary.manifest: %s", exc)
        own = None
    if own is not None:
        groups.append((own, [secondary.model], secondary_settings(models, secondary)))
    digests: Set[str] = set()
    for source, names, settings in groups:
        toolchains = Toolchains(settings, EngineCache(settings.cache_dir, env.now), env)
        try:
            for name in names:
                try:
                    spec = model_spec(source, name, settings.max_batch)
                except (ManifestError, ModelIntegrityError, ValueError) as exc:
                    ctx.logger.warning("model %s: %s", name, exc)
                    continue
                digests.update(key.digest() for key in toolchains.keys(spec))
        finally:
            toolchains.close()
    return digests


def _row(status: EntryStatus, current: Optional[Set[str]]) -> Dict[str, Any]:
    entry = status.entry
    key = entry.key if entry else None
    return {
        "model": status.model,
        "backend": status.backend,
        "file": status.artifact.name if status.artifact else None,
        "runtime_version": key.runtime_version if key else None,
        "device": key.device if key else None,
        "compute_capability": key.compute_capability if key else None,
        "precision": key.precision if key else None,
        "batch_profile": list(key.batch_profile) if key else None,
        "size": status.on_disk_size,
        "built_at": entry.built_at.isoformat() if entry else None,
        "build_seconds": entry.build_seconds if entry else None,
        "valid": status.valid,
        "problem": status.problem,
        "current": (entry.digest in current) if (entry and current is not None) else None,
    }


def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    config = ctx.load().config
    settings = engine_settings(config.models)
    cache = EngineCache(settings.cache_dir, EngineEnvironment().now)
    statuses = cache.entries()
    manifest = _manifest(config.models, ctx)
    current = (
        _current_digests(config.models, config.pipeline.secondary, manifest, ctx)
        if manifest and statuses
        else None
    )
    rows = [_row(s, current) for s in statuses]
    if args.json:
        print(
            json.dumps({"cache_dir": str(cache.root), "engines": rows}, indent=2), file=ctx.stdout
        )
        return EXIT_OK
    if not rows:
        print(f"no engines cached in {cache.root}", file=ctx.stdout)
        return EXIT_OK
    header = ["MODEL", "BACKEND", "RUNTIME", "DEVICE", "PRECISION", "BATCH", "SIZE", "BUILT AT"]
    header += ["VALID", "CURRENT"]
    table = [header]
    for row in rows:
        profile = row["batch_profile"]
        current_text = {True: "yes", False: "no (stale)", None: "?"}[row["current"]]
        table.append(
            [
                row["model"],
                row["backend"],
                row["runtime_version"] or "-",
                (row["device"] or "-")
                + (f" sm{row['compute_capability']}" if row["compute_capability"] else ""),
                row["precision"] or "-",
                "-".join(map(str, profile)) if profile else "-",
                str(row["size"]) if row["size"] is not None else "-",
                (row["built_at"] or "-")[:19],
                "yes" if row["valid"] else f"NO: {row['problem']}",
                current_text,
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print(f"cache: {cache.root}", file=ctx.stdout)
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=ctx.stdout)
    return EXIT_OK


def _verify(args: argparse.Namespace, ctx: CliContext) -> int:
    config = ctx.load().config
    cache = EngineCache(engine_settings(config.models).cache_dir, EngineEnvironment().now)
    statuses = cache.entries()
    if not statuses:
        print(f"no engines cached in {cache.root}", file=ctx.stdout)
        return EXIT_OK
    bad = 0
    for status in statuses:
        name = f"{status.model} ({status.backend}) {status.stem}"
        if status.valid:
            print(f"ok       {name}", file=ctx.stdout)
        else:
            bad += 1
            print(f"CORRUPT  {name}: {status.problem}", file=ctx.stdout)
    if bad:
        print(
            f"emotion-agent: {bad} of {len(statuses)} cached engines are corrupt; they are "
            "rebuilt at the next start (or now: emotion-agent engines build)",
            file=ctx.stderr,
        )
        return EXIT_FAILURE
    print(f"{len(statuses)} cached engines intact", file=ctx.stdout)
    return EXIT_OK


def _clean(args: argparse.Namespace, ctx: CliContext) -> int:
    config = ctx.load().config
    cache = EngineCache(engine_settings(config.models).cache_dir, EngineEnvironment().now)
    if args.stale:
        manifest = _manifest(config.models, ctx)
        if manifest is None:
            return EXIT_FAILURE
        keep = _current_digests(config.models, config.pipeline.secondary, manifest, ctx)
        removed = cache.clean(keep=keep)
    else:
        removed = cache.clean()
    for name in removed:
        print(f"removed {name}", file=ctx.stdout)
    print(f"{len(removed)} removed from {cache.root}", file=ctx.stdout)
    return EXIT_OK

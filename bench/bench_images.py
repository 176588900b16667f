"""Image build time (cold, after a source change, warm) and image sizes: `qkdnet image build`.

- cold: the node and broker images, the node's cached dependency stages and the wheelhouse are
  removed first, and the build runs without the Docker layer cache and without pip's download
  cache (`--pip-cache` keeps it): what a first build on this machine costs. The base image is
  kept unless `--with-base`, which removes it too and times its build (debootstrap, trim,
  import) separately.
- source change: only the node image is removed (its dependency stage and the wheelhouse stay),
  as after an edit of qkdnet's own sources: the wheel of the project and the layers above it.
- warm: the same build once more, which finds every image up to date.

    python bench/bench_images.py [--with-base] [--pip-cache] [--json]

Needs a Docker engine (it says so and exits 0 without one) and root for `--with-base`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from typing import Any

from docker.errors import APIError, ImageNotFound

from qkdnet.orchestrator.runtime.images import (
    BASE_IMAGE,
    LABEL_COMPONENT,
    DockerUnavailable,
    ImageBuilder,
    ImageResult,
    SourceTree,
    docker_client,
)


def remove_images(client: Any, components: list[str]) -> list[str]:
    """Remove every image labelled as one of `components` (children first); their tags."""
    removed: list[str] = []
    for component in components:
        for image in client.images.list(filters={"label": f"{LABEL_COMPONENT}={component}"}):
            if component == "base" and image.attrs.get("Parent"):
                continue  # built on the base, whose labels it inherits: not the base itself
            try:
                client.images.remove(image.id, force=True)
            except ImageNotFound:
                continue
            except APIError as exc:
                what = image.tags or image.id
                raise SystemExit(f"bench_images: cannot remove {what}: {exc}") from None
            removed += image.tags or [image.short_id]
    return removed


def timed_build(source: SourceTree, client: Any, force: bool) -> tuple[float, list[ImageResult]]:
    started = time.monotonic()
    results = ImageBuilder(source, client, force=force).build()
    return time.monotonic() - started, results


def by_component(results: list[ImageResult]) -> dict[str, ImageResult]:
    return {result.component: result for result in results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-base", action="store_true", help="rebuild the base image too")
    parser.add_argument("--pip-cache", action="store_true", help="keep pip's download cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        client = docker_client()
    except DockerUnavailable as exc:
        print(f"bench_images: skipped: {exc}")
        return 0
    source = SourceTree.find()
    if not args.pip_cache:
        os.environ["PIP_NO_CACHE_DIR"] = "1"  # read by the `pip wheel` the builder runs

    removed = remove_images(client, ["node", "broker", "build-stage"])
    if args.with_base:
        removed += remove_images(client, ["base"])
    shutil.rmtree(source.cache_dir / "wheelhouse", ignore_errors=True)
    print(f"cold: removed {', '.join(removed) or 'nothing'} and the wheelhouse", flush=True)
    cold_s, cold = timed_build(source, client, force=True)
    os.environ.pop("PIP_NO_CACHE_DIR", None)

    node_tag = by_component(cold)["node"].reference
    with contextlib.suppress(ImageNotFound):
        # As after an edit: the layers below the project's stay cached (noprune keeps them).
        client.images.remove(node_tag, noprune=True)
    change_s, change = timed_build(source, client, force=False)
    warm_s, warm = timed_build(source, client, force=False)

    figures: dict[str, Any] = {
        "cold_s": round(cold_s, 1),
        "source_change_s": round(change_s, 1),
        "warm_s": round(warm_s, 1),
        "components": {},
    }
    for component, result in by_component(cold).items():
        # A warm build skips the wheelhouse when the node image is up to date.
        again = by_component(change).get(component)
        last = by_component(warm).get(component)
        figures["components"][component] = {
            "reference": result.reference,
            "cold": {"status": result.status, "seconds": round(result.seconds, 1)},
            "source_change_s": round(again.seconds, 1) if again else 0.0,
            "warm": {
                "status": last.status if last else "not needed",
                "seconds": round(last.seconds, 2) if last else 0.0,
            },
            "size_mb": round((result.size_bytes or 0) / 1e6, 1),
            "detail": result.detail,
        }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    base = figures["components"]["base"]
    if base["cold"]["status"] == "built":
        print(f"base image {BASE_IMAGE} (debootstrap + import): {base['cold']['seconds']:.1f} s")
    else:
        print(f"base image {BASE_IMAGE}: kept (--with-base rebuilds and times it)")
    print(
        f"{'component':<12} {'cold':>8} {'src edit':>9} {'warm':>8} {'size':>9}  reference",
        flush=True,
    )
    for component, entry in figures["components"].items():
        print(
            f"{component:<12} {entry['cold']['seconds']:7.1f}s {entry['source_change_s']:8.1f}s"
            f" {entry['warm']['seconds']:7.2f}s {entry['size_mb']:7.0f} MB  {entry['reference']}"
            + (f" ({entry['detail']})" if entry["detail"] else "")
        )
    with_base = "with" if base["cold"]["status"] == "built" else "without"
    warm_status = ", ".join(sorted({r.status for r in warm if r.component != "wheelhouse"}))
    print(
        f"total: cold {cold_s:.1f} s ({with_base} the base image), after a source change "
        f"{change_s:.1f} s, warm {warm_s:.2f} s ({warm_status})\n"
        "(src edit, warm: what was not rebuilt was found up to date in the time shown)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

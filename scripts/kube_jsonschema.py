"""Kubernetes OpenAPI v3 documents -> standalone, strict JSON schemas in the layout kubeconform reads.

The input is the directory of per-group-version OpenAPI v3 documents that Kubernetes publishes
(``api/openapi-spec/v3/*_openapi.json`` in the ``k8s.io/kubernetes`` Go module, the same JSON a kube-apiserver serves
at ``/openapi/v3/<group-version>``). For every kind of every group-version (a component schema carrying
``x-kubernetes-group-version-kind`` for that group-version), one file is written:

    OUT/<group or "v1" for core>-<kind, lower case>-<version>.json

which kubeconform finds with ``-schema-location 'OUT/{{ .Group }}-{{ .ResourceKind }}-{{ .ResourceAPIVersion }}.json'``.
The same layout is what ``scripts/build-chart-tools.sh`` asks kubeconform's own CRD converter to write for
custom resources, so one template covers both.

What the conversion does, and nothing more (the schemas are upstream's; this only makes them self-contained):

* ``$ref``\\s to ``#/components/schemas/...`` are inlined ("standalone"): kubeconform compiles each file on its own.
  A reference cycle (only ``JSONSchemaProps`` has one) is cut with an empty schema at the repeat.
* Every object schema with ``properties`` and no ``additionalProperties`` gets ``additionalProperties: false``
  ("strict"), the rule kubectl's client-side validation applied and kubeconform's converter applies to CRDs, so
  an unknown or misspelt field is an error. ``x-kubernetes-preserve-unknown-fields`` objects stay open.
* ``nullable: true`` becomes a ``"null"`` alternative in ``type`` (JSON Schema has no ``nullable``).

Usage: ``python scripts/kube_jsonschema.py OPENAPI_V3_DIR OUT_DIR`` (prints how many schemas it wrote).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
REF_PREFIX = "#/components/schemas/"
GVK = "x-kubernetes-group-version-kind"


class ConversionError(Exception):
    """The input is not what Kubernetes publishes (the message names the document and the problem)."""


def _inline(schema: Any, components: dict[str, JSON], stack: tuple[str, ...]) -> Any:
    """``schema`` with every component ``$ref`` replaced by (a converted copy of) its target."""
    if isinstance(schema, list):
        return [_inline(x, components, stack) for x in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith(REF_PREFIX):
            raise ConversionError(f"unsupported $ref {ref!r}")
        name = ref.removeprefix(REF_PREFIX)
        if name not in components:
            raise ConversionError(f"$ref to unknown schema {name!r}")
        if name in stack:
            return {}  # a cycle (JSONSchemaProps): accept anything below the repeat
        target = _inline(components[name], components, (*stack, name))
        siblings = {k: _inline(v, components, stack) for k, v in schema.items() if k != "$ref"}
        return {**target, **siblings} if siblings else target
    return {k: _inline(v, components, stack) for k, v in schema.items()}


def _strict(schema: Any) -> Any:
    """Close every object schema (see the module docstring); walks only keywords whose values are schemas."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_strict(x) for x in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = _strict(out["not"])
    if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _group_version(doc: JSON, path: Path) -> tuple[str, str] | None:
    """(group, version) a per-group-version document describes, from its paths; None for discovery-only ones."""
    for p in doc.get("paths", {}):
        parts = p.strip("/").split("/")
        if parts[:1] == ["api"] and len(parts) >= 2:
            return "", parts[1]
        if parts[:1] == ["apis"] and len(parts) >= 3:
            return parts[1], parts[2]
    if "openapi" not in doc:
        raise ConversionError(f"{path}: not an OpenAPI v3 document (no 'openapi' key)")
    return None


def convert_document(doc: JSON, path: Path, out: Path) -> list[Path]:
    """Write the schemas of the kinds in one group-version document; returns the files written."""
    gv = _group_version(doc, path)
    if gv is None:
        return []
    group, version = gv
    components: dict[str, JSON] = doc.get("components", {}).get("schemas", {})
    written = []
    for name, schema in sorted(components.items()):
        for gvk in schema.get(GVK, []):
            if gvk.get("group", "") != group or gvk.get("version") != version:
                continue
            kind = str(gvk["kind"])
            standalone = _strict(_inline(schema, components, (name,)))
            standalone["$schema"] = "http://json-schema.org/draft-04/schema#"
            target = out / f"{group or 'v1'}-{kind.lower()}-{version}.json"
            target.write_text(json.dumps(standalone, indent=1, sort_keys=True) + "\n")
            written.append(target)
    return written


def convert_dir(src: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in sorted(src.glob("*_openapi.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConversionError(f"cannot read {path}: {e}") from e
        written += convert_document(doc, path, out)
    if not written:
        raise ConversionError(f"no kinds found in {src}/*_openapi.json")
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        written = convert_dir(Path(argv[0]), Path(argv[1]))
    except ConversionError as e:
        print(f"kube_jsonschema: {e}", file=sys.stderr)
        return 1
    print(f"kube_jsonschema: wrote {len(written)} schemas to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

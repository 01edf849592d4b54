"""A minimal kustomize: builds deploy/k8s's base and overlays without kubectl or kustomize.

It implements what our kustomizations use (resources, components, configMapGenerator with create/merge/replace,
strategic-merge patches with or without a target, images, replicas, namespace) and refuses any other field or
patch form, so a new construct fails loudly instead of being skipped. Generated ConfigMaps keep their plain names
(no content hash). Used by tests/unit/deploy (the manifests' checks) and tests/integration/deploy (the overlay
start test).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"}

class KustomizeError(Exception):
    pass


SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "components", "configMapGenerator", "patches",
                    "images", "replicas"}


def load_documents(path: Path) -> list[dict]:
    """Every non-empty YAML document of a file."""
    try:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise KustomizeError(f"{path}: {exc}") from exc
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{path}: a document is a {type(doc).__name__}, not a mapping")
    return docs


def read_kustomization(folder: Path) -> dict:
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    (doc,) = load_documents(path)
    unknown = set(doc) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this test's resolver does not implement: {sorted(unknown)}")
    kind = doc.get("kind", "Kustomization")
    expected_api = {"Kustomization": "kustomize.config.k8s.io/v1beta1",
                    "Component": "kustomize.config.k8s.io/v1alpha1"}.get(kind)
    if expected_api is None or doc.get("apiVersion", expected_api) != expected_api:
        raise KustomizeError(f"{path}: kind {kind!r} with apiVersion {doc.get('apiVersion')!r}")
    return doc


def resource_id(resource: dict) -> str:
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


def strategic_merge(target: object, patch: object) -> object:
    """Strategic merge as kustomize does it for the fields we patch: maps merge, null deletes, lists of named maps
    (containers, env, volumes, volumeMounts, ports) merge by name, other lists are replaced."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    named = (isinstance(target, list) and isinstance(patch, list)
             and all(isinstance(i, dict) and "name" in i for i in target + patch))
    if named:
        merged_list = [copy.deepcopy(i) for i in target]
        for item in patch:
            for index, existing in enumerate(merged_list):
                if existing["name"] == item["name"]:
                    merged_list[index] = strategic_merge(existing, item)
                    break
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def pod_containers(resource: dict) -> list[dict]:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def split_image(image: str) -> tuple[str, str | None, str | None]:
    name, _, digest = image.partition("@")
    match = re.match(r"^(.*?)(?::([^:/]+))?$", name)
    assert match
    return match.group(1), match.group(2), digest or None


def build(folder: Path) -> list[dict]:
    """What `kustomize build <folder>` would emit (without the content hash suffix of generated ConfigMaps)."""
    kustomization = read_kustomization(folder)
    if kustomization.get("kind") == "Component":
        raise KustomizeError(f"{folder}: a Component cannot be built on its own")
    return apply_kustomization(folder, kustomization, [])


def apply_kustomization(folder: Path, kustomization: dict, resources: list[dict]) -> list[dict]:
    # The order kustomize uses: resources, then components, then this kustomization's generators and transformers.
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            resources.extend(build(path))
        elif path.is_file():
            resources.extend(load_documents(path))
        else:
            raise KustomizeError(f"{folder}: resource {entry!r} does not exist")
    for entry in kustomization.get("components", []):
        path = (folder / entry).resolve()
        if not path.is_dir():
            raise KustomizeError(f"{folder}: component {entry!r} does not exist")
        component = read_kustomization(path)
        if component.get("kind") != "Component":
            raise KustomizeError(f"{path}: listed under components but is not kind: Component")
        resources = apply_kustomization(path, component, resources)
    for generator in kustomization.get("configMapGenerator", []):
        generate_config_map(folder, generator, resources)
    for patch in kustomization.get("patches", []):
        apply_patch(folder, patch, resources)
    for image in kustomization.get("images", []):
        set_image(image, resources)
    for replica in kustomization.get("replicas", []):
        targets = [r for r in resources if r.get("kind") in ("Deployment", "StatefulSet")
                   and r["metadata"]["name"] == replica["name"]]
        if not targets:
            raise KustomizeError(f"{folder}: replicas: no Deployment named {replica['name']!r}")
        for target in targets:
            target["spec"]["replicas"] = int(replica["count"])
    if "namespace" in kustomization:
        for resource in resources:
            if resource.get("kind") not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    return resources


def generate_config_map(folder: Path, generator: dict, resources: list[dict]) -> None:
    unknown = set(generator) - {"name", "behavior", "literals", "files"}
    if unknown:
        raise KustomizeError(f"{folder}: configMapGenerator fields not implemented here: {sorted(unknown)}")
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep or not key:
            raise KustomizeError(f"{folder}: configMapGenerator literal {literal!r} is not KEY=VALUE")
        data[key] = value
    for entry in generator.get("files", []):
        key, sep, file_name = entry.partition("=")
        path = folder / (file_name if sep else key)
        if not path.is_file():
            raise KustomizeError(f"{folder}: configMapGenerator file {entry!r} does not exist")
        data[key if sep else path.name] = path.read_text()
    name = generator["name"]
    existing = [r for r in resources if r.get("kind") == "ConfigMap" and r["metadata"]["name"] == name]
    behavior = generator.get("behavior", "create")
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{folder}: ConfigMap {name!r} already exists; use behavior merge or replace")
        resources.append({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": name, "annotations": {"test/generated": "true"}}, "data": data})
    elif behavior in ("merge", "replace"):
        if len(existing) != 1:
            raise KustomizeError(f"{folder}: behavior {behavior} needs exactly one ConfigMap {name!r} to exist")
        existing[0]["data"] = {**existing[0].get("data", {}), **data} if behavior == "merge" else data
    else:
        raise KustomizeError(f"{folder}: unknown configMapGenerator behavior {behavior!r}")


def apply_patch(folder: Path, entry: dict, resources: list[dict]) -> None:
    if "path" in entry:
        path = folder / entry["path"]
        if not path.is_file():
            raise KustomizeError(f"{folder}: patch {entry['path']!r} does not exist")
        text = path.read_text()
    elif "patch" in entry:
        text = entry["patch"]
    else:
        raise KustomizeError(f"{folder}: a patch needs path or patch")
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise KustomizeError(f"{folder}: only single-document strategic merge patches are implemented here")
    patch = docs[0]
    target = entry.get("target")
    if target:
        unknown = set(target) - {"kind", "name"}
        if unknown:
            raise KustomizeError(f"{folder}: patch target fields not implemented here: {sorted(unknown)}")
        matches = [r for r in resources
                   if ("kind" not in target or r.get("kind") == target["kind"])
                   and ("name" not in target or re.fullmatch(target["name"], r["metadata"]["name"]))]
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        body["metadata"] = {k: v for k, v in patch.get("metadata", {}).items() if k != "name"}
    else:
        matches = [r for r in resources if r.get("kind") == patch.get("kind")
                   and r["metadata"]["name"] == patch.get("metadata", {}).get("name")]
        body = patch
    if not matches:
        raise KustomizeError(f"{folder}: patch {entry.get('path', '<inline>')} matches no resource")
    if not target and len(matches) > 1:
        raise KustomizeError(f"{folder}: patch {entry.get('path', '<inline>')} matches several resources")
    for match in matches:
        merged = strategic_merge(match, body)
        match.clear()
        match.update(merged)


def set_image(image: dict, resources: list[dict]) -> None:
    for resource in resources:
        for container in pod_containers(resource):
            name, tag, digest = split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                new_tag = image.get("newTag", tag)
                container["image"] = name + (f":{new_tag}" if new_tag else "") + (f"@{digest}" if digest else "")

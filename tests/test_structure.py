"""The package's layout rules, read from its source: imports go downwards only (no cycle, at module
level or inside functions), no module imports a command-line module or the training loop for a
helper, the modules saved pipelines carry import only what plain diffusers has, and modules and
functions stay small."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "denoising_diffusion"
ROOT_NAME = "denoising_diffusion"
# Modules a saved pipeline folder carries (and plain diffusers runs with trust_remote_code=True).
TRAVELLING = ["pipelines.pipeline_cosine_ddim", "pipelines.pipeline_saving", "pipelines.guidance", "pipelines.inversion", "models.unet_continuous",
              "schedulers.noise_schedule", "schedulers.scheduling_cosine_ddim", "schedulers.scheduling_cosine_dpmsolver"]
TRAVEL_SAFE = {"torch", "numpy", "diffusers", "huggingface_hub"}


def module_name(path: Path) -> str:
    parts = [ROOT_NAME, *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(package modules, other top-level packages) that module `name` imports anywhere in its file."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from .x import y` imports the module x.y when there is one, else the name y of x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == ROOT_NAME:
                inside.add(target)
            else:
                outside.add(target.split(".")[0])
    return inside, outside


def graph() -> dict[str, set[str]]:
    """Module -> the package modules importing it runs: its imports, and the `__init__` of every
    package (below the root, which every import runs first) entered from outside."""
    edges = {}
    for name in MODULES:
        targets = set()
        for target in imports_of(name)[0]:
            targets.add(target)
            parts = target.split(".")
            for depth in range(2, len(parts)):
                parent = ".".join(parts[:depth])
                if parent in MODULES and not name.startswith(parent + ".") and name != parent:
                    targets.add(parent)
        edges[name] = targets - {name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def command_line_modules() -> set[str]:
    return {name for name, path in MODULES.items() if 'if __name__ == "__main__":' in path.read_text()}


def test_the_layout_is_read_from_every_module():
    assert {"denoising_diffusion.training.trainer", "denoising_diffusion.pipelines.pipeline_saving",
            "denoising_diffusion.evaluate", "denoising_diffusion.sweep"} <= set(MODULES)
    assert {"denoising_diffusion.evaluate", "denoising_diffusion.hub", "denoising_diffusion.sweep",
            "denoising_diffusion.visualize"} == command_line_modules()
    edges = graph()
    assert "denoising_diffusion.training.callbacks" in edges["denoising_diffusion.training.trainer"]
    # a function-level import counts too
    assert "denoising_diffusion.digits" in edges["denoising_diffusion.visualize"]


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_the_package_modules():
    assert find_cycle(graph()) is None


def test_no_module_imports_a_command_line_module():
    commands = command_line_modules()
    for name, targets in graph().items():
        assert not targets & commands, f"{name} imports {targets & commands}"


def test_only_the_package_and_the_rounds_import_the_training_loop():
    loop = "denoising_diffusion.training.trainer"
    importers = {name for name, targets in graph().items() if loop in targets}
    assert importers == {"denoising_diffusion.training", "denoising_diffusion.training.rounds"}
    both = {name for name, targets in graph().items()
            if {loop, "denoising_diffusion.training.distillation"} <= targets}
    assert both == {"denoising_diffusion.training.rounds"}


@pytest.mark.parametrize("name", TRAVELLING)
def test_modules_that_travel_with_saved_pipelines_import_only_what_diffusers_has(name):
    inside, outside = imports_of(f"{ROOT_NAME}.{name}")
    assert outside <= TRAVEL_SAFE | set(sys.stdlib_module_names), outside - TRAVEL_SAFE
    travelling = {f"{ROOT_NAME}.{n}" for n in TRAVELLING}
    assert inside <= travelling, inside - travelling


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in MODULES.items():
        source = path.read_text()
        if len(source.splitlines()) > 400:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long

"""The Terraform module of one tenant's stack (terraform/modules/servo_stack) against the code
it deploys.

The google provider cannot be downloaded on the project's machines, so ``terraform validate``
cannot run; instead every ``.tf`` file is parsed with python-hcl2 and the invariants that
matter are checked against Servo itself: a Cloud Function for every folder of functions/, the
variables ``CloudConfig.from_env`` and ``WorkerConfig.from_env`` require, a composite index for
every Firestore query of the control plane (read from the source), exponential backoff on the
queues, OIDC on every scheduled or pushed call, IAM scoped to what each service account needs
and no primitive role. ``terraform fmt -check`` runs when the binary is on PATH; otherwise the
test says so (a recorded property and a line of output) and checks the rest.
"""

from __future__ import annotations

import ast
import importlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

import servo
from servo.adapters.gcp import GcpConfig, GcsBlobs
from servo.cloud import CloudConfig, ConfigurationError, open_from_env
from servo.control.dispatch import log_path, output_path
from servo.sdk.event_sensors import default_gcs_topic
from servo.worker.code import bundle_path, project_path
from servo.worker.service import WorkerConfig, WorkerConfigError

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
MODULE = TERRAFORM / "modules" / "servo_stack"
EXAMPLE = TERRAFORM / "examples" / "single_tenant"
FUNCTIONS = ROOT / "functions"
PACKAGE = Path(servo.__file__).resolve().parent

PUBLIC_STEPS = {"trigger", "api", "callback"}
SERVICE_ACCOUNTS = ("functions", "worker", "tasks", "scheduler", "push")
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}

_OPTIONS = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)


# -- Reading the configuration ----------------------------------------------------------------


@dataclass
class Config:
    """Every block of the .tf files of one folder, merged."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""

    def resource(self, address: str) -> dict[str, Any]:
        """The body of resource ``type.name``."""
        rtype, name = address.split(".")
        assert name in self.resources.get(rtype, {}), f"the module has no resource {address}"
        return self.resources[rtype][name]


def parse(path: Path) -> dict[str, Any]:
    """One .tf file as python-hcl2 reads it (string literals unquoted, expressions as ${…})."""
    with path.open(encoding="utf-8") as handle:
        parsed: dict[str, Any] = hcl2.load(handle, serialization_options=_OPTIONS)
    return parsed


@cache
def load(folder: Path) -> Config:
    """The merged configuration of the .tf files in ``folder``."""
    config = Config()
    files = sorted(folder.glob("*.tf"))
    assert files, f"no .tf files in {folder}"
    for path in files:
        parsed = parse(path)
        config.text += path.read_text(encoding="utf-8")
        for block in parsed.get("resource", []):
            for rtype, by_name in block.items():
                config.resources.setdefault(rtype, {}).update(by_name)
        for block in parsed.get("data", []):
            for dtype, by_name in block.items():
                config.data.setdefault(dtype, {}).update(by_name)
        for block in parsed.get("locals", []):
            overlap = set(block) & set(config.locals)
            assert not overlap, f"locals defined twice: {sorted(overlap)}"
            config.locals.update(block)
        for block in parsed.get("variable", []):
            config.variables.update(block)
        for block in parsed.get("output", []):
            config.outputs.update(block)
        for block in parsed.get("module", []):
            config.modules.update(block)
        config.settings.extend(parsed.get("terraform", []))
    return config


def module() -> Config:
    """The configuration of terraform/modules/servo_stack."""
    return load(MODULE)


def inner(value: Any) -> Any:
    """The expression inside ``${…}`` when the whole value is one interpolation."""
    if not (isinstance(value, str) and value.startswith("${") and value.endswith("}")):
        return value
    depth = 0
    for position, char in enumerate(value):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0 and position != len(value) - 1:
                return value  # "${a}-${b}": a template, not one expression
    return value[2:-1]


def only(blocks: Any) -> dict[str, Any]:
    """The single nested block of a list of blocks."""
    assert isinstance(blocks, list), f"expected a nested block, got {blocks!r}"
    assert len(blocks) == 1, f"expected one nested block, got {len(blocks)}"
    block: dict[str, Any] = blocks[0]
    return block


def optional_defaults(type_expression: str) -> dict[str, str]:
    """The defaults of ``optional(type, default)`` attributes of an object type."""
    found = re.findall(r"(\w+) = optional\(\w+(?:\(\w+\))?, ([^()]+?)\)", type_expression)
    return {name: default.strip().strip('"') for name, default in found}


def resolve(config: Config, value: Any) -> Any:
    """A value with references to variables (their defaults) and locals followed."""
    expression = inner(value)
    if not isinstance(expression, str) or expression == value:
        return value
    match = re.fullmatch(r"var\.(\w+)(?:\.(\w+))?", expression)
    if match:
        variable = config.variables[match[1]]
        if match[2] is None:
            return variable.get("default")
        return optional_defaults(variable["type"])[match[2]]
    match = re.fullmatch(r"local\.(\w+)", expression)
    if match:
        return resolve(config, config.locals[match[1]])
    return value


def seconds(duration: str) -> float:
    """A Cloud Tasks duration (``"0.1s"``) in seconds."""
    assert re.fullmatch(r"\d+(\.\d+)?s", duration), f"{duration!r} is not a duration like 1.5s"
    return float(duration[:-1])


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a parsed block, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


# -- The Firestore queries of the control plane -------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One Firestore query the control plane makes, as far as indexes are concerned."""

    site: str
    collection: str
    equalities: frozenset[str]
    contains: frozenset[str]
    ranges: frozenset[str]
    order: tuple[str, str] | None  # (field, ASCENDING | DESCENDING)


@dataclass(frozen=True)
class IndexShape:
    """What a composite index must look like to serve a query."""

    collection: str
    prefix: frozenset[tuple[str, str]]  # (field, EQ | CONTAINS): equality part, any order
    last: tuple[str, str] | None  # the ordered field, or None for an equality-only query


EQUALITY_OPS = {"==", "in"}
RANGE_OPS = {"<", "<=", ">", ">=", "!="}
PASSTHROUGH_SITES = {"control/uow.py"}  # UnitOfWork.query hands its arguments on unchanged


class _QueryFinder(ast.NodeVisitor):
    """Collects ``.query(collection, where, order_by=…)`` calls with their enclosing function."""

    def __init__(self) -> None:
        self.calls: list[tuple[ast.Call, ast.FunctionDef | ast.AsyncFunctionDef | None]] = []
        self._functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "query" and node.args:
            self.calls.append((node, self._functions[-1] if self._functions else None))
        self.generic_visit(node)


def _condition(node: ast.expr, site: str) -> tuple[str, str]:
    if (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Where"
        and len(node.args) >= 2
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[1], ast.Constant)
    ):
        return str(node.args[0].value), str(node.args[1].value)
    raise AssertionError(f"{site}: cannot read the filter {ast.unparse(node)}; extend this test")


def _where_variants(
    node: ast.expr | None, function: ast.AST | None, site: str
) -> list[list[tuple[str, str]]]:
    if node is None:
        return [[]]
    if isinstance(node, ast.List | ast.Tuple):
        return [[_condition(element, site) for element in node.elts]]
    if isinstance(node, ast.Name) and function is not None:
        # A list built in the function: the base list, then with each append in turn.
        base: list[tuple[str, str]] | None = None
        appended: list[tuple[str, str]] = []
        for inner_node in ast.walk(function):
            if (
                isinstance(inner_node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == node.id for t in inner_node.targets)
                and isinstance(inner_node.value, ast.List)
            ):
                base = [_condition(element, site) for element in inner_node.value.elts]
            if (
                isinstance(inner_node, ast.Call)
                and isinstance(inner_node.func, ast.Attribute)
                and inner_node.func.attr == "append"
                and isinstance(inner_node.func.value, ast.Name)
                and inner_node.func.value.id == node.id
            ):
                appended.append(_condition(inner_node.args[0], site))
        if base is not None:
            return [base + appended[:count] for count in range(len(appended) + 1)]
    raise AssertionError(f"{site}: cannot read the filters {ast.unparse(node)}; extend this test")


def _constant(namespace: Any, function: ast.AST | None, name: str) -> Any:
    """The value of ``name`` in a module, or imported inside ``function``."""
    if hasattr(namespace, name):
        return getattr(namespace, name)
    for node in ast.walk(function) if function is not None else ():
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return getattr(importlib.import_module(node.module), alias.name)
    return None


def control_plane_queries() -> tuple[list[Query], set[str]]:
    """Every query of the package outside the adapters and test helpers, and the files whose
    queries only pass a caller's collection on."""
    queries: list[Query] = []
    passthrough: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("adapters", "testing"):
            continue
        finder = _QueryFinder()
        finder.visit(ast.parse(path.read_text(encoding="utf-8")))
        if not finder.calls:
            continue
        module_name = ".".join(("servo", *relative.with_suffix("").parts)).removesuffix(".__init__")
        namespace = importlib.import_module(module_name)
        for call, function in finder.calls:
            site = f"{relative.as_posix()}:{call.lineno}"
            target = call.args[0]
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                collection = target.value
            elif isinstance(target, ast.Name) and isinstance(
                _constant(namespace, function, target.id), str
            ):
                collection = _constant(namespace, function, target.id)
            elif isinstance(target, ast.Name) and function is not None:
                parameters = {a.arg for a in function.args.args + function.args.kwonlyargs}
                assert target.id in parameters, f"{site}: cannot tell the collection"
                passthrough.add(relative.as_posix())
                continue
            else:
                raise AssertionError(f"{site}: cannot tell the collection; extend this test")
            keywords = {k.arg: k.value for k in call.keywords}
            where = call.args[1] if len(call.args) > 1 else keywords.get("where")
            order_node = keywords.get("order_by")
            order: tuple[str, str] | None = None
            if order_node is not None:
                assert isinstance(order_node, ast.Constant), f"{site}: order_by is not a literal"
                if order_node.value is not None:
                    name = str(order_node.value)
                    order = (
                        (name[1:], "DESCENDING") if name.startswith("-") else (name, "ASCENDING")
                    )
            for conditions in _where_variants(where, function, site):
                ops = {(f, op) for f, op in conditions}
                unknown = {op for _, op in ops} - EQUALITY_OPS - RANGE_OPS - {"array_contains"}
                assert not unknown, f"{site}: unknown operators {unknown}"
                queries.append(
                    Query(
                        site=site,
                        collection=collection,
                        equalities=frozenset(f for f, op in ops if op in EQUALITY_OPS),
                        contains=frozenset(f for f, op in ops if op == "array_contains"),
                        ranges=frozenset(f for f, op in ops if op in RANGE_OPS),
                        order=order,
                    )
                )
    return queries, passthrough


def needed_index(query: Query) -> IndexShape | None:
    """The composite index Firestore needs for ``query`` (None: single-field indexes do)."""
    last = query.order
    if query.ranges:
        assert len(query.ranges) == 1, f"{query.site}: several range filters; extend this test"
        (ranged,) = query.ranges
        assert last is None or last[0] == ranged, (
            f"{query.site}: a range on {ranged} ordered by another field; extend this test"
        )
        last = last or (ranged, "ASCENDING")
    ordered = {last[0]} if last else set()
    prefix = frozenset(
        {(f, "EQ") for f in query.equalities - ordered} | {(f, "CONTAINS") for f in query.contains}
    )
    if len(prefix) + len(ordered) <= 1:
        return None
    return IndexShape(query.collection, prefix, last)


def declared_indexes() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """The module's composite indexes: name -> (collection, [(field, mode)])."""
    indexes: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for name, index in module().locals["firestore_indexes"].items():
        fields = [(str(f), str(mode)) for f, mode in index["fields"]]
        indexes[name] = (str(index["collection"]), fields)
    return indexes


def serves(index: tuple[str, list[tuple[str, str]]], shape: IndexShape) -> bool:
    """Whether a composite index serves queries of ``shape``."""
    collection, fields = index
    if collection != shape.collection:
        return False

    def kind(mode: str) -> str:
        return "CONTAINS" if mode == "CONTAINS" else "EQ"

    if shape.last is None:
        return {(f, kind(mode)) for f, mode in fields} == shape.prefix
    return fields[-1] == shape.last and {(f, kind(m)) for f, m in fields[:-1]} == shape.prefix


# -- Parsing and formatting --------------------------------------------------------------------


def test_every_terraform_file_parses() -> None:
    files = sorted(TERRAFORM.rglob("*.tf"))
    assert {p.parent for p in files} == {MODULE, EXAMPLE}
    for path in files:
        assert parse(path), f"{path} is empty"
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (MODULE / name).is_file()


def test_terraform_fmt_check(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``terraform fmt -check -recursive`` when the binary is present; the parse otherwise.

    Whether fmt ran is kept in the test's user properties (``terraform_fmt``), which report
    plugins see, and printed (shown with ``-rA``).
    """
    for path in sorted(TERRAFORM.rglob("*.tf")):
        assert parse(path)
    binary = shutil.which("terraform")
    if binary is None:
        note = "terraform fmt not run: no terraform binary on PATH (the files were parsed)"
        request.node.user_properties.append(("terraform_fmt", note))
        print(note)
        return
    empty_cli_config = tmp_path / "terraformrc"
    empty_cli_config.write_text("", encoding="utf-8")
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", "-no-color", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "TF_CLI_CONFIG_FILE": str(empty_cli_config)},
        check=False,
    )
    request.node.user_properties.append(("terraform_fmt", f"ran, exit {result.returncode}"))
    assert result.returncode == 0, (
        "terraform fmt would change these files (run `terraform fmt -recursive terraform`):\n"
        + result.stdout
        + result.stderr
    )


def test_providers_and_terraform_are_pinned() -> None:
    for folder in (MODULE, EXAMPLE):
        settings = load(folder).settings
        assert len(settings) == 1, f"{folder}: one terraform block"
        block = settings[0]
        assert ">=" in block["required_version"] and "<" in block["required_version"]
        providers = only(block["required_providers"])
        assert providers["google"]["source"] == "hashicorp/google"
        for name, provider in providers.items():
            constraint = provider["version"]
            assert re.search(r">=\s*\d", constraint) and re.search(r"<\s*\d", constraint), (
                f"{folder}: provider {name} needs a lower and an upper bound, got {constraint!r}"
            )
    assert not module().text.count('provider "google"'), "a module must not configure providers"


# -- Functions and their environment -----------------------------------------------------------


def test_every_function_folder_has_a_cloud_function() -> None:
    config = module()
    folders = {p.parent.name for p in FUNCTIONS.glob("*/main.py")}
    assert folders == {
        "trigger",
        "api",
        "dispatch",
        "callback",
        "sweep",
        "tick",
        "sensor_evaluate",
        "compaction",
    }
    assert set(config.locals["function_steps"]) == folders
    function = config.resource("google_cloudfunctions2_function.step")
    assert inner(function["for_each"]) == "local.function_steps"
    build = only(function["build_config"])
    assert inner(build["entry_point"]) == "each.key"
    assert inner(only(only(build["source"])["storage_source"])["object"]) == (
        "var.source_objects[each.key]"
    )
    for step in folders:
        tree = ast.parse((FUNCTIONS / step / "main.py").read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert step in defined, f"functions/{step}/main.py does not define the entry point {step}"
        assert step in config.variables["source_objects"]["validation"][0]["condition"]


def test_public_functions_are_trigger_api_and_callback_and_need_iam() -> None:
    config = module()
    steps = config.locals["function_steps"]
    assert {step for step, s in steps.items() if s["public"] is True} == PUBLIC_STEPS
    service = only(config.resource("google_cloudfunctions2_function.step")["service_config"])
    assert inner(service["ingress_settings"]) == (
        'each.value.public ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"'
    )
    for key, value in walk(config.resources):
        if key == "member":
            assert value not in ("allUsers", "allAuthenticatedUsers"), "a public IAM member"


def test_function_sizing_has_min_and_max_instances_for_every_step() -> None:
    config = module()
    for step, sizing in config.locals["function_steps"].items():
        assert isinstance(sizing["min_instance_count"], int), step
        assert isinstance(resolve(config, sizing["max_instance_count"]), int), step
        timeout = resolve(config, sizing["timeout_seconds"])
        assert isinstance(timeout, int) and 1 <= timeout <= 3600, step
    service = only(config.resource("google_cloudfunctions2_function.step")["service_config"])
    for attribute in ("min_instance_count", "max_instance_count", "timeout_seconds"):
        assert inner(service[attribute]) == f"local.function_sizing[each.key].{attribute}"
    # dispatch must outlive the Cloud Tasks deadline of the control messages it serves.
    assert inner(config.locals["function_steps"]["dispatch"]["timeout_seconds"]) == (
        "var.dispatch_deadline_seconds"
    )


def _required_by_cloud_config() -> set[str]:
    with pytest.raises(ConfigurationError) as missing:
        CloudConfig.from_env({})
    required = set(re.findall(r"(SERVO_[A-Z_]+) is not set", str(missing.value)))
    assert required, "CloudConfig.from_env({}) named no missing variable"
    minimal = dict.fromkeys(required, "x")
    with pytest.raises(ConfigurationError) as no_secret:
        open_from_env(minimal, require_secret=True)
    return required | set(re.findall(r"SERVO_[A-Z_]+", str(no_secret.value)))


def test_functions_get_every_variable_cloud_config_requires() -> None:
    config = module()
    required = _required_by_cloud_config()
    assert "SERVO_CALLBACK_SECRET" in required
    environment = config.locals["function_environment"]
    service = only(config.resource("google_cloudfunctions2_function.step")["service_config"])
    secrets = {s["key"]: s for s in service["secret_environment_variables"]}
    assert required <= set(environment) | set(secrets)
    assert "local.function_environment" in service["environment_variables"]
    # The secret comes from Secret Manager, never as a plain variable.
    for plain in ("function_environment", "optional_function_environment", "tracing_environment"):
        assert "SERVO_CALLBACK_SECRET" not in str(config.locals[plain])
    secret = secrets["SERVO_CALLBACK_SECRET"]
    assert inner(secret["secret"]) == "google_secret_manager_secret.callback.secret_id"
    assert inner(secret["version"]) == "google_secret_manager_secret_version.callback.version"
    assert "secret_data" in config.resource("google_secret_manager_secret_version.callback")


def test_functions_environment_routes_messages_to_this_stack() -> None:
    config = module()
    environment = {k: inner(v) for k, v in config.locals["function_environment"].items()}
    assert environment["SERVO_TASKS_QUEUE"] == "google_cloud_tasks_queue.control.id"
    assert environment["SERVO_EXECUTE_QUEUE"] == "google_cloud_tasks_queue.execute.id"
    assert environment["SERVO_TARGET_DISPATCH"] == 'local.function_urls["dispatch"]'
    assert environment["SERVO_TARGET_EXECUTE"].endswith("/execute")
    assert environment["SERVO_EVALUATOR_URL"].endswith("/evaluate")
    assert environment["SERVO_TASKS_SERVICE_ACCOUNT"] == "google_service_account.tasks.email"
    assert environment["SERVO_FIRESTORE_DATABASE"] == "google_firestore_database.state.name"
    assert environment["SERVO_TENANT"] == "var.tenant"
    assert environment["SERVO_WORKSPACE"] == "var.workspace"
    assert environment["SERVO_ID_TOKEN_SOURCE"] == "metadata"


def test_functions_environment_with_the_defaults_is_a_valid_cloud_config() -> None:
    config = module()
    values: dict[str, str] = {}
    for name, value in config.locals["function_environment"].items():
        if "${" not in value:
            values[name] = value
            continue
        match = re.fullmatch(r"(?:tostring\()?var\.(\w+)\)?", str(inner(value)))
        default = config.variables[match[1]].get("default") if match else None
        values[name] = str(default) if default is not None else f"sample-{name.lower()}"
    values["SERVO_CALLBACK_SECRET"] = "sample-secret"
    parsed = CloudConfig.from_env(values)
    assert parsed.id_token_source == "metadata"
    assert parsed.settings["heartbeat_interval_ms"] == 30000
    assert parsed.settings["heartbeat_timeout_ms"] == 120000
    assert parsed.dispatch_deadline_s == 600.0
    assert parsed.execute_deadline_s == 1800.0
    assert set(parsed.targets) >= {"dispatch", "retry", "finalize", "execute"}


def test_worker_gets_every_variable_worker_config_requires() -> None:
    config = module()
    with pytest.raises(WorkerConfigError) as missing:
        WorkerConfig.from_env({})
    required = set(re.findall(r"SERVO_[A-Z_]+", str(missing.value)))
    assert {"SERVO_GCP_PROJECT", "SERVO_BUCKET", "SERVO_CALLBACK_URL"} <= required
    environment = config.locals["worker_base_environment"]
    assert required <= set(environment)
    assert inner(environment["SERVO_CALLBACK_URL"]) == 'local.function_urls["callback"]'
    assert environment["SERVO_ID_TOKEN_SOURCE"] == "metadata"
    assert "local.worker_base_environment" in config.locals["worker_environment"]


def test_every_servo_variable_the_module_sets_is_one_servo_reads() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))
    known = set(re.findall(r"\bSERVO_[A-Z0-9_]+\b", source))
    for folder in (MODULE, EXAMPLE):
        used = set(re.findall(r"\bSERVO_[A-Z0-9_]+\b", load(folder).text))
        assert used <= known, f"{folder}: variables servo never reads: {sorted(used - known)}"


# -- Firestore ---------------------------------------------------------------------------------


def test_firestore_is_a_named_native_database() -> None:
    config = module()
    database = config.resource("google_firestore_database.state")
    assert database["type"] == "FIRESTORE_NATIVE"
    assert inner(database["name"]) == "local.database_id"
    assert "(default)" not in config.locals["database_id"]
    index = config.resource("google_firestore_index.control")
    assert inner(index["database"]) == "google_firestore_database.state.name"
    # The store queries tenants/T/workspaces/W/<collection> itself: collection scope.
    assert index["query_scope"] == "COLLECTION"


def test_composite_indexes_cover_every_control_plane_query() -> None:
    queries, passthrough = control_plane_queries()
    assert passthrough == PASSTHROUGH_SITES
    assert len(queries) >= 15, "the query scan found suspiciously few queries"
    indexes = declared_indexes()
    needed: dict[IndexShape, list[str]] = {}
    for query in queries:
        shape = needed_index(query)
        if shape is not None:
            needed.setdefault(shape, []).append(query.site)
    assert needed, "no query needs a composite index: the scan is broken"
    missing = {
        shape: sites
        for shape, sites in needed.items()
        if not any(serves(index, shape) for index in indexes.values())
    }
    assert not missing, f"queries without a composite index: {missing}"
    unused = [name for name, index in indexes.items() if not any(serves(index, s) for s in needed)]
    assert not unused, f"composite indexes no query uses (each costs writes): {unused}"


def test_index_scan_reads_the_queries_it_must() -> None:
    queries, _ = control_plane_queries()
    shapes = {needed_index(q) for q in queries}
    assert (
        IndexShape("tasks", frozenset({("state", "EQ"), ("pool", "EQ")}), ("order", "ASCENDING"))
        in shapes
    ), "the pool variant of dispatch_waiting's query was not found"
    assert IndexShape("tasks", frozenset({("run_id", "EQ")}), ("lc", "DESCENDING")) in shapes, (
        "a descending order was not found"
    )
    assert (
        IndexShape(
            "tasks",
            frozenset({("run_id", "EQ"), ("downstream", "CONTAINS"), ("succeeded", "EQ")}),
            None,
        )
        in shapes
    ), "the array_contains query was not found"


# -- Storage -----------------------------------------------------------------------------------


def _object_root(prefix: str, tenant: str, workspace: str) -> str:
    root = str(module().locals["object_root"])
    conditional = '${var.storage_prefix == "" ? "" : "${var.storage_prefix}/"}'
    assert root.startswith(conditional)
    rest = root[len(conditional) :]
    rest = rest.replace("${var.tenant}", tenant).replace("${var.workspace}", workspace)
    return (f"{prefix}/" if prefix else "") + rest


def test_object_prefix_is_the_one_servo_uses() -> None:
    for prefix in ("", "shared/servo"):
        expected = GcpConfig(
            project="p", bucket="b", tasks_queue_path="", prefix=prefix, tenant="acme"
        ).storage_prefix()
        assert _object_root(prefix, "acme", "default") == expected + "/"


def test_bucket_is_uniform_unversioned_and_expires_only_logs_and_outputs() -> None:
    config = module()
    bucket = config.resource("google_storage_bucket.data")
    assert bucket["uniform_bucket_level_access"] is True
    assert only(bucket["versioning"])["enabled"] is False
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["force_destroy"] is False
    rules = [rule["lifecycle_rule"] for rule in bucket["dynamic"]]
    prefixes = {only(rule["content"][0]["condition"])["matches_prefix"][0] for rule in rules}
    assert prefixes == {"${local.object_root}blobs/logs/", "${local.object_root}blobs/outputs/"}
    for rule in rules:
        assert only(rule["content"][0]["action"])["type"] == "Delete"
    assert resolve(config, "${var.output_retention_days}") is None  # outputs kept by default
    assert isinstance(resolve(config, "${var.log_retention_days}"), int)


def _condition_prefixes(expression: str, bucket: str, root: str) -> list[str]:
    expression = expression.replace(
        "${local.object_resource_root}", f"projects/_/buckets/{bucket}/objects/{root}"
    )
    return re.findall(r'startsWith\(\\?"(.+?)\\?"\)', expression)


def test_worker_reaches_only_its_tenants_code_outputs_and_logs() -> None:
    config = module()
    assert config.locals["object_resource_root"] == (
        "projects/_/buckets/${google_storage_bucket.data.name}/objects/${local.object_root}"
    )
    root = _object_root("", "acme", "prod")
    blobs = GcsBlobs("data-bucket", root)
    other = GcsBlobs("data-bucket", _object_root("", "other", "prod"))

    def resource_name(store: GcsBlobs, path: str) -> str:
        return f"projects/_/buckets/data-bucket/objects/{store.object_name(path)}"

    code = config.resource("google_storage_bucket_iam_member.worker_code")
    writes = config.resource("google_storage_bucket_iam_member.worker_outputs_logs")
    assert code["role"] == "roles/storage.objectViewer"
    assert writes["role"] == "roles/storage.objectUser"
    readable = _condition_prefixes(only(code["condition"])["expression"], "data-bucket", root)
    writable = _condition_prefixes(only(writes["condition"])["expression"], "data-bucket", root)
    assert readable and writable

    def allowed(name: str, prefixes: list[str]) -> bool:
        return any(name.startswith(p) for p in prefixes)

    staged = output_path("orders", "2024-01-01", "r1", "t1", 1)
    log = log_path("r1", "t1", 1)
    for path in (bundle_path("v1"), project_path("v1")):
        assert allowed(resource_name(blobs, path), readable)
        assert not allowed(resource_name(blobs, path), writable)
    for path in (staged, log):
        assert allowed(resource_name(blobs, path), writable)
    for path in (bundle_path("v1"), staged, log):
        assert not allowed(resource_name(other, path), readable + writable)
    ledger = f"projects/_/buckets/data-bucket/objects/{root}ledger/events/000000000001.json"
    assert not allowed(ledger, readable + writable)


# -- Queues and the scheduler ------------------------------------------------------------------


def test_queues_retry_with_exponential_backoff() -> None:
    config = module()
    for name in ("control", "execute"):
        queue = config.resource(f"google_cloud_tasks_queue.{name}")
        retry = only(queue["retry_config"])
        low = seconds(resolve(config, retry["min_backoff"]))
        high = seconds(resolve(config, retry["max_backoff"]))
        doublings = int(resolve(config, retry["max_doublings"]))
        assert 0 < low < high, f"{name}: min_backoff must be below max_backoff"
        assert doublings >= 1, f"{name}: max_doublings must be at least 1"
        assert retry["max_attempts"] == -1, f"{name}: every handler is idempotent; retry forever"
        validation = config.variables[f"{name}_queue"]["validation"][0]["condition"]
        assert "min_backoff" in validation and "max_doublings >= 1" in validation
    control = config.resource("google_cloud_tasks_queue.control")
    assert seconds(resolve(config, only(control["retry_config"])["min_backoff"])) == 0.1
    assert seconds(resolve(config, only(control["retry_config"])["max_backoff"])) == 60


def test_execute_queue_is_throttled_to_the_worker_capacity() -> None:
    config = module()
    limits = only(config.resource("google_cloud_tasks_queue.execute")["rate_limits"])
    assert inner(limits["max_concurrent_dispatches"]) == "local.worker_capacity"
    assert inner(config.locals["worker_capacity"]) == (
        "var.worker_max_instances * var.worker_processes"
    )


def test_scheduler_jobs_call_sweep_tick_and_compaction_with_oidc() -> None:
    config = module()
    schedules = config.locals["fixed_schedules"]
    assert schedules["sweep"] == "* * * * *"
    assert schedules["tick"] == "* * * * *"
    assert resolve(config, schedules["compaction"]) == "*/5 * * * *"
    assert config.variables["sensor_evaluate_schedule"]["default"] == "* * * * *"
    assert set(schedules) <= set(config.locals["function_steps"]) - PUBLIC_STEPS
    job = config.resource("google_cloud_scheduler_job.step")
    assert inner(job["for_each"]) == "local.scheduled_steps"
    target = only(job["http_target"])
    assert target["http_method"] == "POST"
    assert "google_cloudfunctions2_function.step[each.key]" in target["uri"]
    token = only(target["oidc_token"])
    assert inner(token["service_account_email"]) == "google_service_account.scheduler.email"
    assert token["audience"] == target["uri"]
    for rtype, by_name in config.resources.items():
        if rtype == "google_cloud_scheduler_job":
            for name, body in by_name.items():
                assert "oidc_token" in only(body["http_target"]), f"{name} calls without OIDC"


# -- Worker service ----------------------------------------------------------------------------


def test_worker_service_runs_one_request_per_process() -> None:
    config = module()
    worker = config.resource("google_cloud_run_v2_service.worker")
    template = only(worker["template"])
    assert inner(template["max_instance_request_concurrency"]) == "var.worker_processes"
    assert config.variables["worker_processes"]["default"] == 1
    assert template["timeout"] == "${var.execute_deadline_seconds}s"
    assert inner(template["service_account"]) == "google_service_account.worker.email"
    container = only(template["containers"])
    assert inner(container["image"]) == "var.worker_image"
    limits = only(container["resources"])["limits"]
    assert inner(limits["cpu"]) == "var.worker_cpu"
    assert inner(limits["memory"]) == "var.worker_memory"
    scaling = only(template["scaling"])
    assert inner(scaling["max_instance_count"]) == "var.worker_max_instances"
    assert inner(config.locals["worker_base_environment"]["SERVO_WORKER_PROCESSES"]) == (
        "tostring(var.worker_processes)"
    )


# -- Sensors -----------------------------------------------------------------------------------


def test_sensor_subscriptions_push_with_oidc_and_dead_letter() -> None:
    config = module()
    subscription = config.resource("google_pubsub_subscription.sensor")
    push = only(subscription["push_config"])
    assert "local.sensor_evaluate_uri" in push["push_endpoint"]
    assert "?topic=" in push["push_endpoint"]
    token = only(push["oidc_token"])
    assert inner(token["service_account_email"]) == "google_service_account.push.email"
    dead_letter = only(subscription["dead_letter_policy"])
    assert inner(dead_letter["dead_letter_topic"]) == "google_pubsub_topic.sensor_dead_letter.id"
    assert inner(dead_letter["max_delivery_attempts"]) == "var.sensor_max_delivery_attempts"
    # Dead letters need a subscription, or Pub/Sub drops them.
    kept = config.resource("google_pubsub_subscription.sensor_dead_letter")
    assert inner(kept["topic"]) == "google_pubsub_topic.sensor_dead_letter.id"
    for address in (
        "google_pubsub_topic_iam_member.pubsub_dead_letter_publisher",
        "google_pubsub_subscription_iam_member.pubsub_dead_letter_subscriber",
    ):
        assert inner(config.resource(address)["member"]) == "local.pubsub_service_agent"


def test_gcs_notifications_go_to_the_topic_gcs_sensors_listen_on() -> None:
    config = module()
    topics = config.locals["gcs_sensor_topics"]
    assert default_gcs_topic("${bucket}") in topics
    notification = config.resource("google_storage_notification.gcs_sensor")
    assert notification["payload_format"] == "JSON_API_V1"
    assert inner(notification["topic"]) == "google_pubsub_topic.gcs_sensor[each.key].id"
    publisher = config.resource("google_pubsub_topic_iam_member.gcs_publisher")
    assert publisher["role"] == "roles/pubsub.publisher"
    assert "google_storage_project_service_account.gcs" in publisher["member"]


# -- IAM -----------------------------------------------------------------------------------------


def test_no_primitive_roles_and_no_authoritative_iam() -> None:
    config = module()
    roles = [value for key, value in walk(config.resources) if key == "role"]
    assert roles
    for role in roles:
        assert role.startswith("roles/"), f"role {role!r} is not a predefined role"
        assert role not in PRIMITIVE_ROLES, f"primitive role {role}"
    for rtype in config.resources:
        assert not rtype.endswith(("_iam_binding", "_iam_policy")), (
            f"{rtype} is authoritative: it would remove grants made outside this stack"
        )
    for name, grant in config.resources.get("google_project_iam_member", {}).items():
        # Project-wide grants are limited to one database, or to what exists only per project.
        assert "condition" in grant or grant["role"] == "roles/cloudtrace.agent", name


def _grants_by_account() -> dict[str, dict[str, str]]:
    """For each service account of the stack: IAM resource address -> role."""
    config = module()
    found: dict[str, dict[str, str]] = {account: {} for account in SERVICE_ACCOUNTS}
    for rtype, by_name in config.resources.items():
        if not rtype.endswith("_iam_member"):
            continue
        for name, body in by_name.items():
            address = f"{rtype}.{name}"
            if address == "google_cloud_run_v2_service_iam_member.function_invoker":
                continue  # read from local.function_invokers below
            members = str(body["member"])
            if "each." in members:
                members += str(body.get("for_each", ""))
            for account in SERVICE_ACCOUNTS:
                if f"service_account_members.{account}" in members:
                    found[account][address] = body["role"]
    return found


def _function_invokers() -> dict[str, set[str]]:
    """Step -> who may invoke it, read from local.function_invokers."""
    config = module()
    invoker = config.resource("google_cloud_run_v2_service_iam_member.function_invoker")
    assert invoker["role"] == "roles/run.invoker"
    assert inner(invoker["for_each"]) == "local.function_invokers"
    assert inner(invoker["member"]) == "each.value.member"
    text = config.locals["function_invokers"]
    pairs = re.findall(r'step = \\?"(\w+)\\?", member = ([\w.]+)', text)
    invokers: dict[str, set[str]] = {}
    for step, member in pairs:
        who = member.rsplit(".", 1)[-1] if "service_account_members" in member else member
        invokers.setdefault(step, set()).add(who)
    assert "var.invoker_members" in text
    return invokers


def test_each_function_is_invoked_only_by_its_callers() -> None:
    assert _function_invokers() == {
        "trigger": {"member"},  # each of var.invoker_members
        "api": {"member"},
        "dispatch": {"tasks"},
        "callback": {"worker"},
        "sweep": {"scheduler"},
        "tick": {"scheduler"},
        "compaction": {"scheduler"},
        "sensor_evaluate": {"scheduler", "push"},
    }


def test_service_accounts_have_least_privilege() -> None:
    config = module()
    assert set(config.resources["google_service_account"]) == set(SERVICE_ACCOUNTS)
    assert _grants_by_account() == {
        "functions": {
            "google_project_iam_member.functions_firestore": "roles/datastore.user",
            "google_storage_bucket_iam_member.functions_objects": "roles/storage.objectUser",
            "google_cloud_tasks_queue_iam_member.functions_enqueue": "roles/cloudtasks.enqueuer",
            "google_service_account_iam_member.functions_act_as_tasks": (
                "roles/iam.serviceAccountUser"
            ),
            "google_secret_manager_secret_iam_member.functions_callback_secret": (
                "roles/secretmanager.secretAccessor"
            ),
            "google_pubsub_topic_iam_member.functions_publish_bus": "roles/pubsub.publisher",
            "google_cloud_run_v2_service_iam_member.worker_invoker": "roles/run.invoker",
            "google_project_iam_member.cloud_trace": "roles/cloudtrace.agent",
        },
        "worker": {
            "google_storage_bucket_iam_member.worker_code": "roles/storage.objectViewer",
            "google_storage_bucket_iam_member.worker_outputs_logs": "roles/storage.objectUser",
            "google_project_iam_member.cloud_trace": "roles/cloudtrace.agent",
        },
        "tasks": {"google_cloud_run_v2_service_iam_member.worker_invoker": "roles/run.invoker"},
        "scheduler": {},
        "push": {},
    }
    # Each grant is on this stack's own resource.
    firestore = only(config.resource("google_project_iam_member.functions_firestore")["condition"])
    assert "google_firestore_database.state.name" in firestore["expression"]
    acting = config.resource("google_service_account_iam_member.functions_act_as_tasks")
    assert inner(acting["service_account_id"]) == "google_service_account.tasks.name"
    enqueue = config.resource("google_cloud_tasks_queue_iam_member.functions_enqueue")
    assert "google_cloud_tasks_queue.control.name" in str(enqueue["for_each"])
    assert "google_cloud_tasks_queue.execute.name" in str(enqueue["for_each"])
    worker_invoker = config.resource("google_cloud_run_v2_service_iam_member.worker_invoker")
    assert inner(worker_invoker["name"]) == "google_cloud_run_v2_service.worker.name"
    trace = config.resource("google_project_iam_member.cloud_trace")
    assert "var.cloud_trace_sample != null" in trace["for_each"]  # off unless asked for


def test_services_run_as_their_own_accounts() -> None:
    config = module()
    service = only(config.resource("google_cloudfunctions2_function.step")["service_config"])
    assert inner(service["service_account_email"]) == "google_service_account.functions.email"
    worker = only(config.resource("google_cloud_run_v2_service.worker")["template"])
    assert inner(worker["service_account"]) == "google_service_account.worker.email"
    assert config.locals["service_account_members"] == {
        account: f"serviceAccount:${{google_service_account.{account}.email}}"
        for account in SERVICE_ACCOUNTS
    }


# -- Variables, outputs and the example ------------------------------------------------------------


def test_variables_are_typed_and_described_and_the_important_ones_validated() -> None:
    config = module()
    for name, variable in config.variables.items():
        assert variable.get("description"), f"variable {name} has no description"
        assert variable.get("type"), f"variable {name} has no type"
    validated = {name for name, v in config.variables.items() if v.get("validation")}
    assert {
        "project_id",
        "region",
        "name_prefix",
        "tenant",
        "workspace",
        "source_objects",
        "worker_image",
        "invoker_members",
        "heartbeat_interval_ms",
        "heartbeat_timeout_ms",
        "dispatch_deadline_seconds",
        "execute_deadline_seconds",
        "control_queue",
        "execute_queue",
        "worker_processes",
    } <= validated
    # The name rules are Servo's own (servo.adapters.gcp.config).
    tenant_rule = config.variables["tenant"]["validation"][0]["condition"]
    assert "[A-Za-z0-9][A-Za-z0-9_-]{0,62}" in tenant_rule


def test_outputs_are_described_and_give_urls_and_accounts() -> None:
    config = module()
    for name, output in config.outputs.items():
        assert output.get("description"), f"output {name} has no description"
    assert {"function_urls", "trigger_url", "api_url", "worker_url"} <= set(config.outputs)
    assert "service_account_emails" in config.outputs
    emails = config.outputs["service_account_emails"]["value"]
    assert set(emails) == set(SERVICE_ACCOUNTS)


def test_example_calls_the_module_with_every_required_variable() -> None:
    example = load(EXAMPLE)
    config = module()
    (call,) = example.modules.values()
    assert (EXAMPLE / call["source"]).resolve() == MODULE.resolve()
    given = set(call) - {"source"}
    assert given <= set(config.variables), f"unknown variables: {given - set(config.variables)}"
    required = {name for name, v in config.variables.items() if "default" not in v}
    assert required <= given, f"the example misses {required - given}"
    for name in ("tenant", "workspace"):
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", call[name])

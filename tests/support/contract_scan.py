"""A static scan of the services' code: which topics each produces to, reads, and in which groups.

Topics and groups are resolved from the expressions the code passes to the bus, following names
through module constants, imports, `self.<attr>` assignments, settings defaults, local variables
and (a few levels) function parameters to their call sites, down to the generated constants of
`cocoon.core.contracts`. Anything that cannot be resolved is reported, so a new way of naming a
topic fails the contract test instead of passing unseen.

Sinks: `<...producer...>.send/.send_raw(topic, ...)` produce; `BusConsumer`, `BroadcastReader`,
`CompactedMirror` and their subclasses (topics argument), `AIOKafkaConsumer(*topics)`,
`<consumer>.subscribe(topics)` and `TopicPartition(topic, ...)` read; `group_id=` of
`BusConsumer` / `AIOKafkaConsumer` is a group (for a consumer that subscribes later, the group of
the topics it subscribes to).
A send to `dead_letter_topic(...)` is a dead letter (derived from what the service reads).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cocoon.core import contracts

# Record fields that carry a topic name (Assignment.work_topic, Heartbeat.work_topic).
TOPIC_FIELDS = {"work_topic": str(contracts.TopicTemplate.WORK)}
_CONSUMER_CLASSES = {"BusConsumer": 1, "BroadcastReader": 1, "CompactedMirror": 1}
_DEAD_LETTER = "<dead letter>"
_DEPTH = 4


@dataclass
class Use:
    kind: str  # produce | consume | group
    values: frozenset[str]
    where: str
    topics: frozenset[str] = frozenset()  # for a group: the topics read in it


@dataclass
class Scan:
    uses: list[Use] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    def values(self, kind: str) -> set[str]:
        return {v for u in self.uses if u.kind == kind for v in u.values} - {_DEAD_LETTER}

    def groups(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for use in self.uses:
            if use.kind == "group":
                for group in use.values:
                    out.setdefault(group, set()).update(use.topics)
        return out


class _Module:
    def __init__(self, name: str, path: Path, text: str) -> None:
        self.name, self.path = name, path
        self.tree = ast.parse(text)
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        self.constants: dict[str, list[ast.expr]] = {}
        self.imports: dict[str, tuple[str, str]] = {}  # local name -> (module, name)
        for node in self.tree.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.constants.setdefault(target.id, []).append(node.value)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                if isinstance(node.target, ast.Name):
                    self.constants.setdefault(node.target.id, []).append(node.value)
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module, alias.name)

    def enclosing(self, node: ast.AST, kind: type) -> ast.AST | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, kind):
                return node
        return None


@functools.cache
def _parsed(name: str, path: Path, text: str) -> _Module:
    return _Module(name, path, text)


class _Package:
    """Every module of `cocoon.*` (for imports) and the ones of one service (scanned)."""

    def __init__(self, src_dirs: list[Path], scanned: Path) -> None:
        self.modules: dict[str, _Module] = {}
        for src in src_dirs:
            for path in sorted(src.rglob("*.py")):
                name = ".".join(path.relative_to(src).with_suffix("").parts)
                module = _parsed(name, path, path.read_text())
                self.modules[name.removesuffix(".__init__")] = module
        self.scanned = [m for m in self.modules.values() if m.path.is_relative_to(scanned)]
        self.attributes: dict[str, list[tuple[_Module, ast.expr]]] = {}
        self.classes: dict[str, tuple[_Module, ast.ClassDef]] = {}
        self.functions: dict[str, list[tuple[_Module, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}
        for module in self.scanned:
            for node in ast.walk(module.tree):
                if isinstance(node, ast.ClassDef):
                    self.classes[node.name] = (module, node)
                    for item in node.body:  # class-level fields: settings defaults
                        if (
                            isinstance(item, ast.AnnAssign)
                            and item.value is not None
                            and isinstance(item.target, ast.Name)
                        ):
                            self._attr(item.target.id, module, item.value)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault(node.name, []).append((module, node))
                elif isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Attribute):
                            self._attr(target.attr, module, node.value)

    def _attr(self, name: str, module: _Module, value: ast.expr) -> None:
        self.attributes.setdefault(name, []).append((module, value))

    def consumer_classes(self) -> dict[str, int]:
        known = dict(_CONSUMER_CLASSES)
        changed = True
        while changed:
            changed = False
            for name, (_, cls) in self.classes.items():
                bases = {b.id for b in cls.bases if isinstance(b, ast.Name)}
                if name not in known and bases & set(known):
                    known[name] = known[next(iter(bases & set(known)))]
                    changed = True
        return known


class _Resolver:
    def __init__(self, package: _Package) -> None:
        self.package = package
        self.contract_values = {
            *(str(t) for t in contracts.Topic),
            *(str(t) for t in contracts.TopicTemplate),
            *(str(g) for g in contracts.Group),
            *(str(g) for g in contracts.GroupTemplate),
        }

    def values(self, expr: ast.expr, module: _Module, depth: int = 0) -> set[str]:
        """Every contract value (topic, template, group) `expr` can stand for."""
        if depth > _DEPTH * 3:
            return set()
        found: set[str] = set()
        for node in self._leaves(expr):
            found |= self._leaf(node, module, depth + 1)
        return found

    def _leaves(self, expr: ast.expr) -> Iterator[ast.expr]:
        if isinstance(expr, ast.List | ast.Tuple | ast.Set):
            for item in expr.elts:
                yield from self._leaves(item)
        elif isinstance(expr, ast.Dict):
            for key in expr.keys:
                if key is not None:
                    yield from self._leaves(key)
        elif isinstance(expr, ast.Starred):
            yield from self._leaves(expr.value)
        elif isinstance(expr, ast.BinOp):
            yield from self._leaves(expr.left)
            yield from self._leaves(expr.right)
        elif isinstance(expr, ast.IfExp):
            yield from self._leaves(expr.body)
            yield from self._leaves(expr.orelse)
        elif isinstance(expr, ast.GeneratorExp | ast.ListComp | ast.SetComp):
            for generator in expr.generators:
                yield from self._leaves(generator.iter)
        else:
            yield expr

    def _leaf(self, node: ast.expr, module: _Module, depth: int) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value} & self.contract_values
        if isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and self._is_contracts(base.id, module):
                return {
                    str(getattr(getattr(contracts, self._imported(base.id, module)), node.attr))
                }
            if node.attr in TOPIC_FIELDS:
                return {TOPIC_FIELDS[node.attr]}
            found: set[str] = set()
            for owner, value in self.package.attributes.get(node.attr, []):
                found |= self.values(value, owner, depth)
            return found
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and key.value in TOPIC_FIELDS:
                return {TOPIC_FIELDS[key.value]}
            return self.values(node.value, module, depth)
        if isinstance(node, ast.Call):
            name = _called(node)
            if name == "dead_letter_topic":
                return {_DEAD_LETTER}
            if name is not None and self._is_contracts(name, module):
                value = getattr(contracts, self._imported(name, module))
                if callable(value) and not isinstance(value, type):
                    return {_template_of(value)}
            found = set()
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                found |= self.values(arg, module, depth)
            return found
        if isinstance(node, ast.Name):
            return self._name(node, module, depth)
        return set()

    def _name(self, node: ast.Name, module: _Module, depth: int) -> set[str]:
        if self._is_contracts(node.id, module):
            return set()
        function = module.enclosing(node, ast.FunctionDef | ast.AsyncFunctionDef)
        if function is not None:
            assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            local = [
                n.value
                for n in ast.walk(function)
                if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == node.id for t in n.targets)
            ]
            if local:
                return set().union(*(self.values(v, module, depth) for v in local))
            params = [a.arg for a in function.args.args]
            if node.id in params and depth < _DEPTH * 3:
                return self._arguments(function, params.index(node.id), node.id, depth)
        if node.id in module.constants:
            return set().union(*(self.values(v, module, depth) for v in module.constants[node.id]))
        if node.id in module.imports:
            source, name = module.imports[node.id]
            other = self.package.modules.get(source)
            if other is not None:  # its constant, or its own import of the name
                return self._name(ast.Name(id=name), other, depth + 1)
        return set()

    def _arguments(
        self, function: ast.FunctionDef | ast.AsyncFunctionDef, index: int, param: str, depth: int
    ) -> set[str]:
        """What the call sites of `function` pass for one parameter."""
        method = bool(function.args.args) and function.args.args[0].arg in ("self", "cls")
        position = index - 1 if method else index
        names = {function.name}
        if function.name == "__init__":
            names = {c for c, (_, cls) in self.package.classes.items() if function in cls.body}
        found: set[str] = set()
        for module in self.package.scanned:
            for call in ast.walk(module.tree):
                if not isinstance(call, ast.Call) or _called(call) not in names:
                    continue
                for keyword in call.keywords:
                    if keyword.arg == param:
                        found |= self.values(keyword.value, module, depth + _DEPTH)
                if 0 <= position < len(call.args):
                    found |= self.values(call.args[position], module, depth + _DEPTH)
        return found

    def _is_contracts(self, name: str, module: _Module) -> bool:
        return module.imports.get(name, ("", ""))[0] == "cocoon.core.contracts"

    def _imported(self, name: str, module: _Module) -> str:
        return module.imports[name][1]


def _called(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _template_of(helper: object) -> str:
    """The template a generated helper (`work_topic`) fills: its one template enum default."""
    for template in (*contracts.TopicTemplate, *contracts.GroupTemplate):
        params = {p: "x" for p in _params(str(template))}
        try:
            if helper(**params) == str(template).format(**params):  # type: ignore[operator]
                return str(template)
        except TypeError:
            continue
    raise ValueError(f"{helper} fills no known template")


def _params(template: str) -> list[str]:
    import re

    return re.findall(r"\{([a-z_][a-z0-9_]*)\}", template)


def scan(src_dirs: list[Path], package_dir: Path) -> Scan:
    """Produce / consume / group uses of the service whose code is under `package_dir`."""
    package = _Package(src_dirs, package_dir)
    resolver = _Resolver(package)
    consumers = package.consumer_classes()
    result = Scan()
    for module in package.scanned:
        # `x = AIOKafkaConsumer(group_id=...)` then `x.subscribe(topics)`: the group of x.
        consumer_groups = {
            ast.unparse(node.targets[0]): keyword.value
            for node in ast.walk(module.tree)
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and _called(node.value) == "AIOKafkaConsumer"
            for keyword in node.value.keywords
            if keyword.arg == "group_id"
        }
        for call in ast.walk(module.tree):
            if not isinstance(call, ast.Call):
                continue
            where = f"{module.path}:{call.lineno}"
            name = _called(call)
            receiver = ast.unparse(call.func)
            topics: list[ast.expr] = []
            kind = None
            group = next((k.value for k in call.keywords if k.arg == "group_id"), None)
            if name in ("send", "send_raw") and "producer" in receiver and call.args:
                kind, topics = "produce", [call.args[0]]
            elif name in consumers and len(call.args) > consumers[name]:
                kind, topics = "consume", [call.args[consumers[name]]]
            elif name == "AIOKafkaConsumer":
                kind, topics = "consume", list(call.args)
            elif name == "subscribe" and "consumer" in receiver and call.args:
                kind, topics = "consume", [call.args[0]]
                group = consumer_groups.get(receiver.removesuffix(".subscribe"))
            elif name == "TopicPartition" and call.args:
                kind, topics = "consume", [call.args[0]]
            if kind is None:
                continue
            values: set[str] = set()
            for topic in topics:
                values |= resolver.values(topic, module)
            if topics and not values:
                result.unresolved.append(f"{where}: {kind} of {ast.unparse(topics[0])}")
                continue
            if values:
                result.uses.append(Use(kind, frozenset(values), where))
            if name == "AIOKafkaConsumer" and not topics:
                continue  # subscribes later: its group is counted at the subscribe call
            if group is None or (isinstance(group, ast.Constant) and group.value is None):
                continue
            groups = resolver.values(group, module)
            if not groups:
                result.unresolved.append(f"{where}: group {ast.unparse(group)}")
            else:
                result.uses.append(Use("group", frozenset(groups), where, frozenset(values)))
    return result

"""The statements ``vig sql`` runs: queries and inspection only, never a write.

Two checks, both must pass. The first reads the text: the first keyword is one of ``READ_ONLY``, no keyword
that writes (``INSERT``, ...) appears outside string literals, quoted identifiers and comments (Spark SQL
accepts ``WITH ... INSERT INTO`` and ``FROM t INSERT ...``), one statement per call, and no function that
calls JVM methods (``reflect``, ``java_method``) appears anywhere. The second, authoritative one, asks
Spark's own parser for the statement's plan and refuses any node that writes: an insert, or a command other
than SHOW, DESCRIBE and EXPLAIN (which only plans). On a classic session it walks the parsed plan's nodes; on
Spark Connect (no access to the parser) it reads the parsed plan that ``EXPLAIN EXTENDED`` prints, which plans
the statement without running it, and refuses a node named as a command or a write.
"""

from __future__ import annotations

import re

from vig_udf.errors import InputError

READ_ONLY = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE", "FROM")
# the words with which a statement that starts like a query can still write (WITH ... INSERT INTO t ...)
WRITING = ("INSERT", "OVERWRITE", "MERGE", "UPDATE", "DELETE", "DROP", "CREATE", "ALTER", "TRUNCATE")
HOW_TO_WRITE = ("vig sql runs read-only statements ({allowed}). To change tables on purpose, use the jobs "
                "(vig ingest / score / select), `vig lake optimize` / `vig lake vacuum`, or Spark with Delta "
                "Lake directly (DeltaTable.forPath(spark, path) or SQL on delta.`<path>`).")
# literals, quoted identifiers and comments, whose words are not keywords
_NOT_CODE = re.compile(r"[rR]'[^']*'|[rR]\"[^\"]*\"|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`]|``)*`|--[^\r\n]*"
                       r"|/\*.*?\*/", re.DOTALL)
# functions that call arbitrary JVM methods: refused wherever the name appears, strings and comments included
_REFLECTION = re.compile(r"reflect|java_method", re.IGNORECASE)
# parsed plan nodes that write without being a Command, and the commands that only look
_WRITING_NODES = ("InsertIntoStatement", "InsertIntoDir")
_INSPECTION_PREFIXES = ("Show", "Describe", "Explain")
_PRINTED_RELATION = re.compile(r"'UnresolvedRelation \[([^\]]*)\]")
_PRINTED_FUNCTION = re.compile(r"'UnresolvedTableValuedFunction \[([^\]]*)\]")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# a node of a parsed plan as EXPLAIN prints it ("+- 'InsertIntoStatement ..."): its name
_PRINTED_NODE = re.compile(r"^[\s|:+-]*'?([A-Za-z][A-Za-z0-9]*)")
_PRINTED_WRITE = re.compile(r"Command$|Statement$|^(Insert|Create|Drop|Alter|Replace|Truncate|Merge|Update|Delete|"
                            r"Append|Overwrite|Set|Reset|Cache|Uncache|Refresh|Add|Use|Load|Analyze|Repair|Optimize|"
                            r"Vacuum|Restore|Clone|Convert|Rename|Comment|Grant|Revoke|Call|Write)")


# table functions that make rows without reading a file; any other (read_files, ...) is refused
_ROW_FUNCTIONS = ("range", "explode", "explode_outer", "inline", "inline_outer", "posexplode", "posexplode_outer",
                  "stack", "json_tuple", "variant_explode", "variant_explode_outer", "sql_keywords")
_HIDDEN = ("_delta_log", "_staging")  # inside the lake, yet no table: read through the tables only


class ReadOnlyError(InputError):
    """A statement that would change tables or the session, or read files outside the lake's tables."""


def check_source(parts: list[str], lake: str | None) -> None:
    """Refuse a relation named ``format.`path``` (``text.`/etc/hostname```, ``delta.`s3a://other/t```) unless the
    path is inside the lake ``lake`` (and not in its log or staging folders); a one-part name (the lake's tables)
    passes."""
    if len(parts) < 2 or not any(c in parts[-1] for c in "/:\\"):
        return
    from vig_udf.storage import canonical

    path, root = canonical(parts[-1]), canonical(lake) if lake else None
    inside = root is not None and path.startswith(root.rstrip("/") + "/")
    if not inside or any(part in _HIDDEN for part in path[len(root):].split("/")):
        raise ReadOnlyError(f"Refused {'.'.join(parts[:-1])}.`{parts[-1]}`: vig sql reads the lake's tables by "
                            f"name (and paths inside the lake {root}), not other files")


def check_table_function(name: str) -> None:
    """Refuse a table-valued function that reads files (``read_files``, ...): only row generators pass."""
    if name.lower().rsplit(".", 1)[-1] not in _ROW_FUNCTIONS:
        raise ReadOnlyError(f"Refused the table function {name}(...): vig sql reads the lake's tables by name, "
                            "not files")


def check_read_only(statement: str, spark=None, lake: str | None = None) -> None:
    """Raise :class:`ReadOnlyError` unless ``statement`` is one read-only statement; with a Spark session, also
    check the plan Spark's parser makes of it, which reads no file outside the lake ``lake``
    (:func:`check_source`, :func:`check_table_function`)."""
    code = _NOT_CODE.sub(" ", statement).strip().rstrip(";").strip()
    message = HOW_TO_WRITE.format(allowed=", ".join(READ_ONLY[:6]))
    if ";" in code:
        raise ReadOnlyError(f"One statement per call, please. {message}")
    if _REFLECTION.search(statement):
        raise ReadOnlyError(f"Refused a statement that names a JVM reflection function (reflect, java_method): {message}")
    words = [word.upper() for word in _WORD.findall(code)]
    if not words or words[0] not in READ_ONLY:
        raise ReadOnlyError(f"Refused {words[0] if words else 'an empty statement'!s}: {message}")
    if words[0] not in ("SHOW", "DESCRIBE", "DESC", "EXPLAIN"):  # these only look (EXPLAIN plans, runs nothing)
        writes = sorted(set(words) & set(WRITING))
        if writes:
            raise ReadOnlyError(f"Refused a statement that contains {', '.join(writes)}: {message}")
    if spark is not None:
        from vig_udf.lake.session_conf import is_connect

        (_check_printed_plan if is_connect(spark) else _check_plan)(spark, statement, message, lake)


def _check_printed_plan(spark, statement: str, message: str, lake: str | None = None) -> None:
    try:
        printed = spark.sql("EXPLAIN EXTENDED " + statement).first()[0]
    except Exception as error:  # noqa: BLE001 - a statement Spark cannot parse is not run either
        raise ReadOnlyError(f"Spark cannot parse the statement: {_first_line(error)}") from None
    parsed = printed.split("== Parsed Logical Plan ==", 1)[-1].split("== Analyzed Logical Plan ==", 1)[0]
    for line in parsed.strip().splitlines():
        match = _PRINTED_NODE.match(line)
        name = match.group(1) if match else ""
        relation = _PRINTED_RELATION.search(line)
        if relation:
            check_source([p.strip() for p in relation.group(1).split(", ")], lake)
        function = _PRINTED_FUNCTION.search(line)
        if function:
            check_table_function(function.group(1).split(", ")[-1])
        if name.startswith(_INSPECTION_PREFIXES):
            continue
        if _PRINTED_WRITE.search(name):
            raise ReadOnlyError(f"Refused a statement whose plan writes ({name}): {message}")


def _first_line(error: Exception) -> str:
    """Spark's own reason in one line (the parser's message sits below py4j's call line)."""
    from vig_udf.errors import cause_line

    return cause_line(error, needles=("PARSE_SYNTAX_ERROR", "ParseException", "Syntax error"))


def _check_plan(spark, statement: str, message: str, lake: str | None = None) -> None:
    jvm = spark._jvm
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(statement)
    except Exception as error:  # noqa: BLE001 - a statement Spark cannot parse is not run either
        raise ReadOnlyError(f"Spark cannot parse the statement: {_first_line(error)}") from None
    command = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.plans.logical.Command")
    subquery = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.expressions.SubqueryExpression")
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        name = node.getClass().getSimpleName()
        if name == "UnresolvedRelation":
            check_source(_strings(node.multipartIdentifier()), lake)
        elif name == "UnresolvedTableValuedFunction":
            check_table_function(".".join(_strings(node.name())))
        nodes += [p for p in _seq(node.innerChildren())]  # a WITH's definitions
        expressions = _seq(node.expressions())
        while expressions:  # subqueries in expressions (IN (SELECT ...), EXISTS, scalar) are plans too
            expression = expressions.pop()
            if subquery.isInstance(expression):
                nodes.append(expression.plan())
            expressions += _seq(expression.children())
        inspection = command.isInstance(node) and name.startswith(_INSPECTION_PREFIXES)
        if name in _WRITING_NODES or (command.isInstance(node) and not inspection):
            raise ReadOnlyError(f"Refused a statement whose plan writes ({name}): {message}")
        children = node.children()
        nodes += [children.apply(i) for i in range(children.size())]


def _seq(seq) -> list:
    return [seq.apply(i) for i in range(seq.size())]


def _strings(seq) -> list[str]:
    return [str(part) for part in _seq(seq)]

"""Error messages for people: one line each."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none.

    Libraries (torch, onnx, onnxruntime) raise messages of many lines with stack dumps inside; a
    command-line error or a log entry should stay one line that names the problem.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

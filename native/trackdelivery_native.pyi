BUILD: str  # "pgo", "release" or "instrumented" (native/build.sh)

class RowDecoder:
    def __init__(
        self,
        fields: list[str],
        event_keys: dict[str, str],
        arrival_keys: dict[str, str],
        types: list[tuple[int, str, object]],
        schema_version: int,
    ) -> None: ...
    def add_dictionary(self, dictionary_id: bytes, data: bytes) -> None: ...
    def decode(
        self,
        candidates: list[tuple[int, bytes, bytes | None, bytes]],
        wanted: tuple[str, ...] | list[str],
        exact: tuple[tuple[int, int, int], list[tuple[list[int], bytes]]] | None = None,
    ) -> list[tuple[object, bytes, tuple[object, ...] | None] | None]: ...

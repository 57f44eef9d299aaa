class RowDecoder:
    def __init__(
        self,
        fields: list[str],
        event_keys: dict[str, str],
        arrival_keys: dict[str, str],
        type_names: dict[int, str],
        schema_version: int,
    ) -> None: ...
    def add_dictionary(self, dictionary_id: bytes, data: bytes) -> None: ...
    def decode(
        self, records: list[tuple[bytes, bytes | None, bytes]], wanted: list[str]
    ) -> list[tuple[bytes, tuple[object, ...]] | None]: ...

"""The devices below the node: registrar (REGISTER, MESSAGE), registry and its SQLite store, and
the queries the node sends them (DeviceInfo, Catalog)."""

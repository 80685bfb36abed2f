"""Who may do what: API users and their roles, upstreams, sharing classes and time-limited
grants, decided in one place (`AccessPolicy`) for every path that serves video."""

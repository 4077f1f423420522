"""Who may do what: users with passwords, API tokens and browser sessions, console tickets.

The pieces here are pure (no database, no web framework): ``passwords`` hashes and checks
passwords with argon2id; ``tokens`` makes and checks bearer secrets (API tokens and browser
sessions share one shape); ``tickets`` hands out the short-lived console tickets that guard
telnet and VNC ports exposed beyond loopback. ``virtlab.services.users`` keeps users and tokens
in the catalog, and ``virtlab.api.auth`` asks every request who it is.
"""

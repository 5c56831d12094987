"""The ``archir`` command line (entry point ``archir = archir.cli.main:main``).

The command line sits at the top of the house: it may import ``archir``, ``passes``,
``costmodels`` and ``search``, and nothing imports it. Subcommands are listed in
:data:`archir.cli.main.SUBCOMMANDS`; a later subcommand lives in its own module under
``archir/cli/`` that defines ``SUBCOMMANDS`` and is found automatically (see that module's
docstring).

Public names (in ``archir.cli.main``): ``main``, ``Subcommand``, ``SUBCOMMANDS``,
``extra_modules``, ``CLIError``, ``build_parser``, ``to_dot``, ``export_verified``.
"""

"""Search strategies with an ask/tell interface (see :mod:`search.strategies.base`).

Public names:
    Strategy, CandidateSpec, STRATEGIES, register_strategy, get_strategy, StrategyError,
        mutation_op: the interface and the registry.
    RandomSearch (``"random"``), RegularizedEvolution (``"evolution"``), Reinforce (``"reinforce"``,
        NAS-RL), PNAS (``"pnas"``), HillClimb (``"hillclimb"``, NASH), Petridish (``"petridish"``): the
        strategies (the last two grow trained networks with morphisms: space ``"start"``, search.morph).
"""

from search.strategies.base import (STRATEGIES, CandidateSpec, Strategy, StrategyError, get_strategy, mutation_op,
                                    register_strategy)
from search.strategies.random_search import RandomSearch
from search.strategies.evolution import RegularizedEvolution
from search.strategies.hillclimb import HillClimb
from search.strategies.petridish import Petridish
from search.strategies.reinforce import Reinforce
from search.strategies.pnas import PNAS

__all__ = ["Strategy", "CandidateSpec", "STRATEGIES", "register_strategy", "get_strategy", "StrategyError",
           "mutation_op", "RandomSearch", "RegularizedEvolution",
           "Reinforce", "PNAS", "HillClimb", "Petridish"]

"""Planners that play a Procgen level well by searching the game's own state.

Procgen can copy and restore a running game (``get_state`` / ``set_state``), its random
generator included, so a move can be tried and its real consequences seen before it is made.

- maze (:class:`ShortestPaths`): the screen determines the state and the agent is the only
  mover, so a breadth-first search over the screens the agent's moves reach finds every
  shortest path to the level's reward: it searches a level once (a few hundred restored
  steps, well under a second on a CPU) and then names, for any screen of that level, the
  moves that start a shortest path.
- bigfish (:class:`Lookahead`): other fish move and appear at random, so the planner looks a
  few steps ahead from every state: each move held for ``horizon`` steps, scored by the
  reward it earns and whether the agent survives.

They are the teachers of :mod:`lapo.rl.distill`, which trains a demonstrator network on
their moves, since PPO needs far more CPU time than a session has to learn these games.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

import numpy as np

from lapo.envs.procgen import EnvError

MOVES: dict[str, tuple[int, ...]] = {"maze": (1, 3, 5, 7), "bigfish": tuple(range(9))}
"""The games the planner can search -> the moves it tries. maze: Procgen's LEFT, DOWN, UP,
RIGHT (its diagonals act as one of their two directions, the rest as NOOP); bigfish: the
eight directions and NOOP (0-8; the rest act as NOOP)."""

LOOKAHEAD_GAMES = ("bigfish",)
"""The games searched by :class:`Lookahead` (the others by :class:`ShortestPaths`)."""

MAX_SCREENS = 20_000
"""The search stops after this many distinct screens (an easy maze has at most a few hundred)."""


def check_planner_game(game: str) -> str:
    """Return ``game`` if the planner can search it, else raise :class:`EnvError`."""
    if game not in MOVES:
        raise EnvError(
            f"the planner cannot search {game!r}: choose one of {', '.join(MOVES)}, or train "
            "a demonstrator with 'lapo expert train'"
        )
    return game


def one_game(game: str, distribution_mode: str = "easy", seed: int = 0, **options: Any) -> Any:
    """A Procgen game with one environment (``ProcgenGym3Env``, unbounded levels), as the
    planner searches in: it can save and restore the game's whole state."""
    from lapo.envs.procgen import _import_procgen

    return _import_procgen()(
        num=1,
        env_name=game,
        distribution_mode=distribution_mode,
        num_levels=0,
        start_level=0,
        rand_seed=seed,
        **options,
    )


def screen_key(obs: np.ndarray) -> bytes:
    """A 16-byte digest of one uint8 screen ``(64, 64, 3)``."""
    return hashlib.blake2b(np.ascontiguousarray(obs).tobytes(), digest_size=16).digest()


class ShortestPaths:
    """The shortest paths to the reward of the level running in ``env``.

    ``env`` is a ``ProcgenGym3Env`` with one environment. :meth:`moves` takes the screen the
    environment shows and returns the moves that start a shortest path from it, searching the
    level (from that screen) the first time it sees a screen it does not know; the search
    restores the environment's state when it is done. :meth:`new_level` forgets the level.

    With ``stop_at_reward`` the search stops at the first screen from which a move earns the
    reward, about half the work: the moves are then exact from every screen on a shortest path
    from where the search started (a policy that only takes these moves stays on them), but
    not from screens off those paths.
    """

    def __init__(self, env: Any, game: str, stop_at_reward: bool = False) -> None:
        self.env = env
        self.actions = MOVES[check_planner_game(game)]
        self.stop_at_reward = stop_at_reward
        self.new_level()

    def new_level(self) -> None:
        """Forget the searched level (call when an episode ends)."""
        self.edges: dict[bytes, dict[int, bytes]] = {}  # screen -> move -> next screen
        self.rewarded: dict[bytes, list[int]] = {}  # screen -> moves that earn the reward
        self.distance: dict[bytes, int] | None = None  # screen -> moves to the reward

    def _search(self) -> None:
        """Breadth-first search from the current screen over every screen the moves reach."""
        env = self.env
        start_state = env.get_state()
        _, obs, _ = env.observe()
        start = screen_key(obs["rgb"][0])
        self.edges.setdefault(start, {})
        queue = deque([(start, start_state)])
        found = False  # a move from a searched screen earns the reward
        while queue and len(self.edges) < MAX_SCREENS and not (found and self.stop_at_reward):
            key, state = queue.popleft()
            for a in self.actions:
                env.set_state(state)
                env.act(np.array([a], np.int32))
                reward, obs, first = env.observe()
                if reward[0] > 0:
                    self.rewarded.setdefault(key, []).append(a)
                    found = True
                    continue
                if first[0]:  # the episode ended without the reward
                    continue
                nxt = screen_key(obs["rgb"][0])
                if nxt == key:  # a wall: the move changes nothing
                    continue
                self.edges[key][a] = nxt
                if nxt not in self.edges:
                    self.edges[nxt] = {}
                    queue.append((nxt, env.get_state()))
        env.set_state(start_state)
        self.distance = None

    def _distances(self) -> dict[bytes, int]:
        """Moves from each screen to the reward: breadth-first backwards from the rewarded."""
        parents: dict[bytes, list[bytes]] = {}
        for key, edges in self.edges.items():
            for nxt in edges.values():
                parents.setdefault(nxt, []).append(key)
        distance = dict.fromkeys(self.rewarded, 1)
        queue = deque(self.rewarded)
        while queue:
            key = queue.popleft()
            for parent in parents.get(key, []):
                if parent not in distance:
                    distance[parent] = distance[key] + 1
                    queue.append(parent)
        return distance

    def moves(self, obs: np.ndarray, state: bytes | None = None) -> list[int]:
        """The moves that start a shortest path to the reward from screen ``obs`` ``(64, 64,
        3)``; ``[]`` when the reward cannot be reached. ``obs`` is the screen ``env`` shows
        now, or with ``state`` (another environment's ``get_state()`` entry for that screen)
        the screen of that state, which ``env`` takes on if it has to search. A screen the
        last search did not reach belongs to a new level: the planner forgets the old one."""
        key = screen_key(obs)
        if key not in self.edges:
            if state is not None:
                self.new_level()
                self.env.set_state([state])
            self._search()
        if self.distance is None:
            self.distance = self._distances()
        d = self.distance.get(key)
        if d is None:
            return []
        return [
            a
            for a in self.actions
            if a in self.rewarded.get(key, ())
            or self.distance.get(self.edges[key].get(a, b""), -1) == d - 1
        ]

    def steps_to_reward(self, obs: np.ndarray) -> int | None:
        """Moves on a shortest path from screen ``obs`` to the reward (None: unreachable)."""
        self.moves(obs)
        assert self.distance is not None
        return self.distance.get(screen_key(obs))


class Lookahead:
    """The moves that do best over the next ``horizon`` steps of the game running in ``env``.

    ``env`` is a ``ProcgenGym3Env`` with one environment. For each move, :meth:`moves`
    restores the current state and holds the move for ``horizon`` steps: the game's real
    future under that move, since the saved state holds Procgen's random generator too. A
    move scores its rewards discounted by ``discount`` per step, less ``death_penalty``
    (discounted the same) when the episode ends without a reward on its last step (in
    bigfish: a bigger fish ate the agent). The moves within ``1e-6`` of the best score are
    returned, all of them where nothing is in reach. ``env`` is left in the state it was in.
    Holding each of bigfish's 9 moves for 10 steps costs about 16 ms a decision on a CPU.
    """

    def __init__(
        self,
        env: Any,
        game: str,
        horizon: int = 10,
        discount: float = 0.97,
        death_penalty: float = 100.0,
    ) -> None:
        self.env = env
        self.actions = MOVES[check_planner_game(game)]
        self.horizon = horizon
        self.discount = discount
        self.death_penalty = death_penalty

    def new_level(self) -> None:
        """Nothing to forget: every decision searches afresh."""

    def score(self, move: int) -> float:
        """Discounted return of holding ``move`` for ``horizon`` steps from the current
        state (the state changes: restore it after)."""
        env, total = self.env, 0.0
        for t in range(self.horizon):
            env.act(np.array([move], np.int32))
            reward, _, first = env.observe()
            total += float(reward[0]) * self.discount**t
            if first[0]:  # the episode ended: the level was won (a reward) or lost
                if reward[0] <= 0:
                    total -= self.death_penalty * self.discount**t
                break
        return total

    def moves(self, obs: np.ndarray | None = None, state: bytes | None = None) -> list[int]:
        """The best moves from the current state of ``env`` (``obs``, its screen, is not
        needed), or with ``state`` (another environment's ``get_state()`` entry) from that
        state, which ``env`` keeps afterwards."""
        if state is not None:
            self.env.set_state([state])
        start = self.env.get_state()
        scores = []
        for a in self.actions:
            self.env.set_state(start)
            scores.append(self.score(a))
        self.env.set_state(start)
        best = max(scores)
        return [a for a, s in zip(self.actions, scores, strict=True) if s >= best - 1e-6]


Planner = ShortestPaths | Lookahead


def make_planner(env: Any, game: str, stop_at_reward: bool = False) -> Planner:
    """The planner that searches ``game`` in ``env`` (a one-environment Procgen game):
    :class:`Lookahead` for :data:`LOOKAHEAD_GAMES`, else :class:`ShortestPaths`."""
    if check_planner_game(game) in LOOKAHEAD_GAMES:
        return Lookahead(env, game)
    return ShortestPaths(env, game, stop_at_reward=stop_at_reward)


class PlannerPolicy:
    """The planner as a policy (:class:`lapo.evaluation.policies.Policy`): in each of the
    environments it plays, a shortest-path move (drawn at random among equally short ones).

    It reads the game's state, not only the screen, so it must be :meth:`attach`-ed to the
    :class:`lapo.envs.procgen.ProcgenVecEnv` it plays after each ``reset``; it searches a
    level in a one-environment copy of the game (the same options) loaded with that state.
    """

    def __init__(self, game: str, seed: int = 0) -> None:
        self.name = "planner"
        self.game = check_planner_game(game)
        self.rng = np.random.default_rng(seed)
        self.vec: Any = None
        self.planners: list[Planner] = []

    def attach(self, vec: Any) -> None:
        """Play in ``vec`` (a ProcgenVecEnv just reset), one planner per environment."""
        if vec.game != self.game:
            raise EnvError(f"the {self.game} planner cannot play {vec.game}")
        self.vec = vec
        search = one_game(vec.game, vec.distribution_mode, **vec.options)
        self.planners = [
            make_planner(search, self.game, stop_at_reward=True) for _ in range(vec.num_envs)
        ]

    def act(self, obs: np.ndarray) -> np.ndarray:
        """uint8 ``(N, 64, 64, 3)`` -> int64 actions ``(N,)``."""
        if self.vec is None or len(obs) != len(self.planners):
            raise RuntimeError("attach the planner to the environments it plays first")
        actions = np.full(len(obs), 4, np.int64)  # NOOP where the reward is out of reach
        states: list[bytes] | None = None
        if self.game in LOOKAHEAD_GAMES:  # every decision searches from the game's state
            states = self.vec.get_state()
            for i, planner in enumerate(self.planners):
                actions[i] = self.rng.choice(planner.moves(state=states[i]))
            return actions
        for i, screen in enumerate(obs):
            planner = self.planners[i]
            # a screen the last search did not reach (a new level), or one it reached without
            # finding its way on (the search stopped at the reward before it did): search anew
            known = screen_key(screen) in planner.edges
            moves = planner.moves(screen) if known else []
            if not moves:
                states = states or self.vec.get_state()
                planner = self.planners[i] = ShortestPaths(planner.env, self.game, True)
                moves = planner.moves(screen, states[i])
            if moves:
                actions[i] = self.rng.choice(moves)
        return actions

    def describe(self) -> dict:
        return {"kind": "planner", "game": self.game}

"""The search tree of step-level MCTS in fixed-shape device buffers, and its pure operations.

A prompt's tree has ``T = 1 + simulations · B`` node slots: node 0 is the root (the empty
response); simulation ``s`` writes its ``B`` children into slots ``1 + s·B + b``, so the node
count follows from ``B`` and the simulations and never from the data. Every array is batched
over ``G`` prompts (``[G, T]``). All functions are traceable.

* :func:`uct_scores` / :func:`select_leaf`: from the root, descend to the child with the largest
  UCT score ``Q + c·sqrt(ln N_parent / N_child)`` (``Q`` = mean backed-up value, ``N`` =
  visits; ties: the first child) until a node that has not been expanded.
* :func:`backup`: add a value sum and a visit count to a node and all its ancestors.
* :func:`most_visited_leaf`: the path of most visits, from the root down.

Invariant (``visits``): a node's visits are its own evaluations (``evals``) plus its children's
visits, so the root's visits are the number of evaluations of the whole search.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Tree", "backup", "empty_tree", "most_visited_leaf", "select_leaf", "uct_scores"]


class Tree(NamedTuple):
    """``G`` trees of ``T`` node slots (``B`` children per expanded node, contiguous).

    Attributes:
      parent: ``[G, T]`` int32 parent slot (-1: the root, or a slot not in use).
      first_child: ``[G, T]`` int32 slot of the first child (-1: not expanded).
      depth: ``[G, T]`` int32 steps from the root.
      terminal: ``[G, T]`` bool the node's response has ended (it is not expanded).
      visits: ``[G, T]`` int32 evaluations in the node's subtree; evals: ``[G, T]`` int32 the
        node's own evaluations; value: ``[G, T]`` float32 sum of the backed-up values.
    """

    parent: jax.Array
    first_child: jax.Array
    depth: jax.Array
    terminal: jax.Array
    visits: jax.Array
    evals: jax.Array
    value: jax.Array


def empty_tree(g: int, t: int) -> Tree:
    """``G`` trees holding only their root (slot 0)."""
    z = jnp.zeros((g, t), jnp.int32)
    return Tree(z - 1, z - 1, z, jnp.zeros((g, t), bool), z, z, jnp.zeros((g, t), jnp.float32))


def uct_scores(value, visits, parent_visits, c):
    """UCT score of children with value sums ``value [..., B]`` and ``visits [..., B]`` under
    parents of ``parent_visits [...]`` visits: ``value/visits + c·sqrt(ln N_parent / visits)``;
    an unvisited child scores +inf (it is tried first)."""
    n = jnp.maximum(visits, 1).astype(jnp.float32)
    parent = jnp.maximum(parent_visits, 1).astype(jnp.float32)[..., None]
    score = value / n + c * jnp.sqrt(jnp.log(parent) / n)
    return jnp.where(visits > 0, score, jnp.inf)


def _children(tree: Tree, node, b: int):
    """Slots ``[G, B]`` of ``node [G]``'s children."""
    first = jnp.take_along_axis(tree.first_child, node[:, None], axis=1)
    return jnp.maximum(first, 0) + jnp.arange(b)[None, :]


def select_leaf(tree: Tree, b: int, c, max_depth: int):
    """``[G]`` the node UCT selection reaches: from the root, the child of largest
    :func:`uct_scores` (the first among ties) until a node that is not expanded (at most
    ``max_depth`` steps down)."""
    g = tree.parent.shape[0]

    def down(_, node):
        expanded = jnp.take_along_axis(tree.first_child, node[:, None], axis=1)[:, 0] >= 0
        kids = _children(tree, node, b)
        score = uct_scores(
            jnp.take_along_axis(tree.value, kids, axis=1),
            jnp.take_along_axis(tree.visits, kids, axis=1),
            jnp.take_along_axis(tree.visits, node[:, None], axis=1)[:, 0],
            c,
        )
        best = jnp.take_along_axis(kids, jnp.argmax(score, axis=-1)[:, None], axis=1)[:, 0]
        return jnp.where(expanded, best, node)

    return jax.lax.fori_loop(0, max_depth, down, jnp.zeros((g,), jnp.int32))


def backup(tree: Tree, node, value, visits, max_depth: int) -> Tree:
    """Add ``value [G]`` and ``visits [G]`` to ``node [G]`` and each of its ancestors (the root
    included; a tree is at most ``max_depth`` deep)."""
    g = node.shape[0]
    rows = jnp.arange(g)

    def up(_, carry):
        tr, at = carry
        on = at >= 0
        where = jnp.maximum(at, 0)
        tr = tr._replace(
            value=tr.value.at[rows, where].add(jnp.where(on, value, 0.0)),
            visits=tr.visits.at[rows, where].add(jnp.where(on, visits, 0)),
        )
        return tr, jnp.where(on, tr.parent[rows, where], -1)

    tree, _ = jax.lax.fori_loop(0, max_depth + 1, up, (tree, node))
    return tree


def most_visited_leaf(tree: Tree, b: int, max_depth: int):
    """``[G]`` the end of the most-visited path: from the root, the child of most visits (the
    first among ties) until a node that is not expanded."""
    g = tree.parent.shape[0]

    def down(_, node):
        expanded = jnp.take_along_axis(tree.first_child, node[:, None], axis=1)[:, 0] >= 0
        kids = _children(tree, node, b)
        visits = jnp.take_along_axis(tree.visits, kids, axis=1)
        best = jnp.take_along_axis(kids, jnp.argmax(visits, axis=-1)[:, None], axis=1)[:, 0]
        return jnp.where(expanded, best, node)

    return jax.lax.fori_loop(0, max_depth, down, jnp.zeros((g,), jnp.int32))

"""Where the positional bias lives (METHOD.md section 6): token shifting, thought shifting and
attention by document. Pure functions and model passes; ``pos2distill analyze`` runs them."""

"""Recommendations from the ALS model, the catalogue and the live profile.

* ``catalog.py`` the items, their categories and their (recent) popularity;
* ``ann.py``     an IVF cosine index for item neighbours in big catalogues;
* ``core.py``    candidates, re-ranking, MMR diversity and reasons (pure).
"""

from portrait.recommend.catalog import Catalog
from portrait.recommend.core import Rec, Recommender, RecommendParams, UserContext

__all__ = ["Catalog", "Rec", "RecommendParams", "Recommender", "UserContext"]

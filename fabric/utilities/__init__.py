"""Small helpers shared by every part of the fabric. Nothing here imports a part or the facade."""

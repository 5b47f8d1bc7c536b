"""The recipes that ship with kgen (`kgen.recipes`), one flat file each;
`kgen recipes` lists them. What a recipe file holds, and how kgen loads
one: `kgen.recipe`."""

from tests.golden import write_missing

for path in write_missing():
    print(f"wrote {path}")

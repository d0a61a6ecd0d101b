-- The gateway's database is POSTGRES_DB; the bank keeps its own.
CREATE DATABASE bank;

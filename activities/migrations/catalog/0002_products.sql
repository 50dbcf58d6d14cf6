-- Products: the catalog's one aggregate (id = sku).
-- category uses the "C" collation so that a prefix range (a category and its
-- descendants) is an index range scan, and keyset pages order bytewise.
CREATE TABLE products (
    sku         text PRIMARY KEY COLLATE "C",
    title       text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    brand       text        NOT NULL DEFAULT '',
    category    text        NOT NULL COLLATE "C",
    attributes  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    price_minor bigint      NOT NULL CHECK (price_minor >= 0),
    currency    char(3)     NOT NULL,
    active      boolean     NOT NULL DEFAULT true,
    version     bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_category_sku ON products (category, sku);

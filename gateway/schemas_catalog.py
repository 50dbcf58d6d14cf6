"""Request and response bodies of the catalog and search routes (strict, unknown fields rejected).

Query strings are text, so query models are lax about types ("25" is 25) but
still forbid unknown parameters. Repeated parameters (`?sku=a&sku=b`) arrive as
lists through `QueryList`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from gateway.schemas import Answer, Strict
from workers.catalog.model import (
    CATEGORY_PATTERN,
    CURRENCIES,
    MAX_ATTRIBUTE_KEY,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    MAX_PRICE_MINOR,
)

MAX_PAGE_SIZE = 100
MAX_BATCH = 100
MAX_IMPORT = 1_000
# An import's own body limit (every other route keeps AGORA_GATEWAY_MAX_BODY_BYTES):
# 1,000 products of ~1.5 KB each, a long description and a few attributes. No more:
# the products become the import workflow's input, and Temporal refuses a payload
# over 2 MiB (JSON-escaped non-ASCII text grows on the way there).
MAX_IMPORT_BODY_BYTES = 1536 * 1024


def _known_currency(code: str) -> str:
    if code not in CURRENCIES:
        raise ValueError(f"currency must be one of {', '.join(sorted(CURRENCIES))}")
    return code


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$"), AfterValidator(_known_currency)]
Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Category = Annotated[str, StringConstraints(pattern=CATEGORY_PATTERN.pattern, max_length=200)]
AmountMinor = Annotated[int, Field(ge=0, le=MAX_PRICE_MINOR, description="Integer minor units")]
Text = Annotated[str, StringConstraints(max_length=5000)]
QueryList = Annotated[list[str], BeforeValidator(_as_list)]
AttributeKey = Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_KEY)]
AttributeValue = Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_VALUE)]


class MoneyModel(Strict):
    amount_minor: AmountMinor
    currency: Currency


class Lax(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


# Catalog requests -----------------------------------------------------------------


class ProductFields(Strict):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    description: Text = ""
    brand: Annotated[str, StringConstraints(max_length=100)] = ""
    category: Category
    attributes: Annotated[dict[AttributeKey, AttributeValue], Field(max_length=MAX_ATTRIBUTES)] = (
        Field(default_factory=dict)
    )
    price: MoneyModel


class CreateProductRequest(ProductFields):
    sku: Sku
    active: bool = True


class UpdateProductRequest(ProductFields):
    active: bool | None = Field(
        default=None,
        description="Omitted: left as it is (an edit does not bring back a product"
        " DELETE deactivated)",
    )
    expected_version: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Fail with 409 unless the product is at this version"
    )


class ChangePriceRequest(Strict):
    amount_minor: AmountMinor
    currency: Currency
    expected_version: Annotated[int, Field(ge=1)] | None = None


class ImportProductRow(ProductFields):
    sku: Sku
    active: bool | None = Field(
        default=None,
        description="Omitted: a new product is on sale, an existing one keeps its own"
        " (an import does not bring back a product DELETE deactivated)",
    )


class ImportProductsRequest(Strict):
    products: Annotated[list[ImportProductRow], Field(min_length=1, max_length=MAX_IMPORT)]
    batch_size: Annotated[int, Field(ge=1, le=500)] = 100

    @model_validator(mode="after")
    def _each_sku_once(self) -> ImportProductsRequest:
        # Two rows of one sku, one `"active": false` (a recall) and one without `active`
        # (keep it as it is), kept the product on sale: "keep" is decided per sku.
        seen: set[str] = set()
        for row in self.products:
            if row.sku in seen:
                raise ValueError(f"sku {row.sku} appears more than once: one row per sku")
            seen.add(row.sku)
        return self


SkuList = Annotated[list[Sku], BeforeValidator(_as_list)]


class ProductsQuery(Lax):
    sku: SkuList | None = Field(
        default=None, description=f"Batch get: repeat up to {MAX_BATCH} times"
    )
    category: Category | None = Field(
        default=None, description="List a category and its descendants"
    )
    cursor: Annotated[str, StringConstraints(max_length=512)] = ""
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 50

    @model_validator(mode="after")
    def _one_mode(self) -> ProductsQuery:
        if self.sku is not None:
            if self.category is not None or self.cursor:
                raise ValueError("sku (batch get) cannot be combined with category or cursor")
            if not 1 <= len(self.sku) <= MAX_BATCH:
                raise ValueError(f"1 to {MAX_BATCH} skus per batch")
        return self


# Catalog answers ---------------------------------------------------------------------


class MoneyAnswer(Answer):
    amount_minor: int
    currency: str


class ProductResponse(Answer):
    sku: str
    title: str
    description: str
    brand: str
    category: str
    attributes: dict[str, str]
    price: MoneyAnswer
    active: bool
    version: int
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ProductListResponse(Answer):
    products: list[ProductResponse]
    not_found: list[str] | None = Field(default=None, description="Batch get: unknown skus")
    next_cursor: str | None = Field(default=None, description="Listing: absent on the last page")


class ProductWriteResponse(Answer):
    sku: str
    version: int
    changed: bool = Field(description="False when the product already was in this state")


class ImportStartedResponse(Answer):
    import_id: str
    status_url: str


class ImportRowError(Answer):
    sku: str
    reason: str


class ImportStatusResponse(Answer):
    import_id: str
    state: Literal["running", "completed", "failed"]
    total: int
    processed: int
    created: int
    updated: int
    unchanged: int
    failed: int
    errors: list[ImportRowError]


# Search -------------------------------------------------------------------------------

SortName = Literal["relevance", "price_asc", "price_desc", "newest"]
FacetName = Literal["category", "brand", "price"]


class SearchQuery(Lax):
    q: Annotated[str, StringConstraints(max_length=256)] = Field(
        default="", description='Words, "quoted phrases", -excluded; empty matches everything'
    )
    category: QueryList | None = None
    brand: QueryList | None = None
    min_price: AmountMinor | None = None
    max_price: AmountMinor | None = None
    currency: Currency = "EUR"
    in_stock: bool = False
    sort: SortName = "relevance"
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 20
    cursor: Annotated[str, StringConstraints(max_length=1024)] = ""
    facet: QueryList | None = Field(default=None, description="category, brand and/or price")
    highlight: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SearchQuery:
        if self.min_price is not None and self.max_price is not None:
            if self.min_price > self.max_price:
                raise ValueError("min_price must not exceed max_price")
        for name in self.facet or []:
            if name not in ("category", "brand", "price"):
                raise ValueError(f"unknown facet {name!r}: use category, brand or price")
        for category in self.category or []:
            if not CATEGORY_PATTERN.fullmatch(category):
                raise ValueError(f"category {category!r} is not a category path")
        if len(self.category or []) > 20 or len(self.brand or []) > 20:
            raise ValueError("at most 20 categories and 20 brands")
        return self


class HighlightAnswer(Answer):
    field: str
    fragments: list[str]


class SearchHitResponse(Answer):
    sku: str
    title: str
    brand: str
    category: str
    price: MoneyAnswer
    in_stock: bool
    score: float | None = None
    highlights: list[HighlightAnswer] | None = None


class FacetBucketResponse(Answer):
    key: str
    count: int
    min_price: int | None = None
    max_price: int | None = None


class SearchResponseBody(Answer):
    hits: list[SearchHitResponse]
    total: int
    total_is_lower_bound: bool
    facets: dict[str, list[FacetBucketResponse]]
    next_cursor: str | None = None

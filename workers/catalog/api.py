"""Catalog's gRPC read API: maps messages to CatalogReads and back."""

from __future__ import annotations

from contracts.agora.catalog.v1 import (
    BatchGetProductsRequest,
    BatchGetProductsResponse,
    CatalogServiceBase,
    GetProductRequest,
    GetProductResponse,
    ListProductsRequest,
    ListProductsResponse,
    PriceLinesRequest,
    PriceLinesResponse,
)
from contracts.agora.common.v1 import PageInfo
from workers.catalog.reads import CatalogReads


class CatalogApi(CatalogServiceBase):
    def __init__(self, reads: CatalogReads):
        self.reads = reads

    async def get_product(self, message: GetProductRequest) -> GetProductResponse:
        return GetProductResponse(product=await self.reads.get(message.sku))

    async def batch_get_products(
        self, message: BatchGetProductsRequest
    ) -> BatchGetProductsResponse:
        products, not_found = await self.reads.batch_get(list(message.skus))
        return BatchGetProductsResponse(products=products, not_found=not_found)

    async def list_products(self, message: ListProductsRequest) -> ListProductsResponse:
        page = message.page
        result = await self.reads.list_page(
            message.category,
            message.include_inactive,
            page.page_size if page else 0,
            page.cursor if page else "",
        )
        return ListProductsResponse(
            products=result.products,
            page=PageInfo(next_cursor=result.next_cursor, has_more=bool(result.next_cursor)),
        )

    async def price_lines(self, message: PriceLinesRequest) -> PriceLinesResponse:
        lines, subtotal, unavailable = await self.reads.price_lines(
            list(message.lines), message.currency
        )
        return PriceLinesResponse(lines=lines, subtotal=subtotal, unavailable_skus=unavailable)

"""/api/accounts: connect, list, read, replace, patch and delete mail accounts."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.edge import respond, unit
from app.api.openapi import operation
from app.api.validation import parse_body, parse_query
from app.schemas.accounts import (
    AccountCreate,
    AccountListParams,
    AccountOut,
    AccountPage,
    AccountPatch,
    AccountReplace,
)
from app.schemas.pagination import NAME, page_request, paginate
from app.schemas.sync import FolderListParams, FolderOut, FolderPage
from app.services import accounts

bp = Blueprint("accounts", __name__, url_prefix="/api/accounts")
TAGS = ("accounts",)


@bp.post("")
@operation(
    "Connect a mail account (optionally verifying the IMAP and SMTP logins first)",
    tags=TAGS,
    request=AccountCreate,
    responses={201: ("The account.", AccountOut)},
    quota=True,
)
def create_account() -> Response:
    body = parse_body(AccountCreate)
    account = accounts.create_account(unit(), body.fields(), verify=body.verify)
    return respond(AccountOut.of(account), 201, location=f"/api/accounts/{account.id}")


@bp.get("")
@operation(
    "List the tenant's accounts",
    tags=TAGS,
    params=AccountListParams,
    responses={200: ("A page of accounts.", AccountPage)},
    errors=(422,),
)
def list_accounts() -> Response:
    page = page_request(parse_query(AccountListParams))
    rows = accounts.list_accounts(unit(), page.after, page.limit + 1)
    items, cursor = paginate(rows, page.limit, key=lambda a: a.id)
    return respond(AccountPage(items=[AccountOut.of(a) for a in items], next_cursor=cursor))


@bp.get("/<int:account_id>")
@operation(
    "Read one account", tags=TAGS, responses={200: ("The account.", AccountOut)}, errors=(404,)
)
def get_account(account_id: int) -> Response:
    return respond(AccountOut.of(accounts.get_account(unit(), account_id)))


@bp.put("/<int:account_id>")
@operation(
    "Replace an account's settings (a password left out keeps its stored value while its "
    "server stays the same)",
    tags=TAGS,
    request=AccountReplace,
    responses={200: ("The account.", AccountOut)},
    errors=(404,),
)
def replace_account(account_id: int) -> Response:
    accounts.get_account(unit(), account_id)  # 404 before the body's checks
    body = parse_body(AccountReplace)
    account = accounts.replace_account(unit(), account_id, body.fields(), verify=body.verify)
    return respond(AccountOut.of(account))


@bp.patch("/<int:account_id>")
@operation(
    "Change some of an account's settings",
    tags=TAGS,
    request=AccountPatch,
    responses={200: ("The account.", AccountOut)},
    errors=(404,),
)
def patch_account(account_id: int) -> Response:
    accounts.get_account(unit(), account_id)  # 404 before the body's checks
    changes = parse_body(AccountPatch).model_dump(exclude_unset=True)
    verify = changes.pop("verify", False)
    account = accounts.patch_account(unit(), account_id, changes, verify=verify)
    return respond(AccountOut.of(account))


@bp.get("/<int:account_id>/folders")
@operation(
    "The account's folders with their roles and counts",
    tags=TAGS,
    params=FolderListParams,
    responses={200: ("A page of folders, by name.", FolderPage)},
    errors=(404, 422),
)
def list_folders(account_id: int) -> Response:
    accounts.get_account(unit(), account_id)  # 404 before the parameters' checks
    page = page_request(parse_query(FolderListParams), NAME)
    rows = accounts.list_folders(unit(), account_id, page.after, page.limit + 1)
    items, cursor = paginate(rows, page.limit, key=lambda f: f.name, codec=NAME)
    return respond(FolderPage(items=[FolderOut.of(f) for f in items], next_cursor=cursor))


@bp.delete("/<int:account_id>")
@operation(
    "Delete an account and all of its synced mail",
    tags=TAGS,
    responses={204: ("Deleted.", None)},
    errors=(404,),
)
def delete_account(account_id: int) -> Response:
    accounts.delete_account(unit(), account_id)
    return Response(status=204)

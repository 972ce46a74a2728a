"""/api/accounts: connect, list, read, replace, patch and delete mail accounts."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import select

from app.api.openapi import operation
from app.api.pagination import ID, NAME, PageParams, cursor_field, page_request, paginate
from app.api.validation import parse_body, parse_query, validate
from app.db import get_session
from app.mail import ServerSettings
from app.models import Account, Folder
from app.schemas.accounts import (
    AccountCreate,
    AccountOut,
    AccountPage,
    AccountPatch,
    AccountReplace,
    ServerOut,
)
from app.schemas.sync import FolderOut, FolderPage
from app.secrets import SecretBox
from app.services import accounts
from app.services.accounts import AccountFields

bp = Blueprint("accounts", __name__, url_prefix="/api/accounts")
TAGS = ("accounts",)


class AccountListParams(PageParams):
    cursor: str | None = cursor_field(ID)


class FolderListParams(PageParams):
    cursor: str | None = cursor_field(NAME)


def _box() -> SecretBox:
    return current_app.extensions["secretbox"]


def _ca_file() -> str | None:
    return current_app.config["SETTINGS"].mail_tls_ca_file or None


def account_out(account: Account) -> dict:
    servers = {
        kind: ServerOut(
            host=getattr(account, f"{kind}_host"),
            port=getattr(account, f"{kind}_port"),
            security=getattr(account, f"{kind}_security"),
            username=getattr(account, f"{kind}_username"),
        )
        for kind in ("imap", "smtp")
    }
    return AccountOut(
        id=account.id,
        email=account.email,
        display_name=account.display_name,
        state=account.state,
        last_error=account.last_error,
        created_at=account.created_at,
        updated_at=account.updated_at,
        **servers,
    ).model_dump(mode="json")


def _fields(body: AccountCreate | AccountReplace) -> AccountFields:
    return AccountFields(
        email=body.email,
        display_name=body.display_name,
        imap=ServerSettings(**body.imap.model_dump()),
        smtp=ServerSettings(**body.smtp.model_dump()),
    )


def _respond(account: Account, status: int) -> Response:
    session = get_session()
    session.commit()
    session.refresh(account)  # server-side timestamps
    response = jsonify(account_out(account))
    response.status_code = status
    return response


@bp.post("")
@operation(
    "Connect a mail account (optionally verifying the IMAP and SMTP logins first)",
    tags=TAGS,
    request=AccountCreate,
    responses={201: ("The account.", AccountOut)},
)
def create_account():
    body = parse_body(AccountCreate)
    account = accounts.create_account(
        get_session(), _box(), _fields(body), verify=body.verify, ca_file=_ca_file()
    )
    response = _respond(account, 201)
    response.headers["Location"] = f"/api/accounts/{account.id}"
    return response


@bp.get("")
@operation(
    "List the tenant's accounts",
    tags=TAGS,
    params=AccountListParams,
    responses={200: ("A page of accounts.", AccountPage)},
    errors=(422,),
)
def list_accounts():
    page = page_request(parse_query(AccountListParams))
    rows = accounts.list_accounts(get_session(), page.after, page.limit + 1)
    items, cursor = paginate(rows, page.limit, key=lambda a: a.id)
    return jsonify({"items": [account_out(a) for a in items], "next_cursor": cursor})


@bp.get("/<int:account_id>")
@operation(
    "Read one account", tags=TAGS, responses={200: ("The account.", AccountOut)}, errors=(404,)
)
def get_account(account_id: int):
    return jsonify(account_out(accounts.get_account(get_session(), account_id)))


@bp.put("/<int:account_id>")
@operation(
    "Replace an account's settings (passwords left out keep their stored values)",
    tags=TAGS,
    request=AccountReplace,
    responses={200: ("The account.", AccountOut)},
    errors=(404,),
)
def replace_account(account_id: int):
    account = accounts.get_account(get_session(), account_id)
    body = parse_body(AccountReplace)
    accounts.update_account(
        get_session(), _box(), account, _fields(body), verify=body.verify, ca_file=_ca_file()
    )
    return _respond(account, 200)


@bp.patch("/<int:account_id>")
@operation(
    "Change some of an account's settings",
    tags=TAGS,
    request=AccountPatch,
    responses={200: ("The account.", AccountOut)},
    errors=(404,),
)
def patch_account(account_id: int):
    account = accounts.get_account(get_session(), account_id)
    patch = parse_body(AccountPatch).model_dump(exclude_unset=True)
    verify = patch.pop("verify", False)
    current = accounts.current_fields(account, _box())
    merged = {
        "email": current.email,
        "display_name": current.display_name,
        "imap": {**_server_dict(current.imap), **(patch.pop("imap", None) or {})},
        "smtp": {**_server_dict(current.smtp), **(patch.pop("smtp", None) or {})},
        **patch,
    }
    # The merged result must be a valid whole account (e.g. no null host).
    body = validate(AccountReplace, {**merged, "verify": verify})
    accounts.update_account(
        get_session(), _box(), account, _fields(body), verify=verify, ca_file=_ca_file()
    )
    return _respond(account, 200)


def _server_dict(server: ServerSettings) -> dict:
    return {
        "host": server.host,
        "port": server.port,
        "security": server.security,
        "username": server.username,
        "password": server.password,
    }


@bp.get("/<int:account_id>/folders")
@operation(
    "The account's folders with their roles and counts",
    tags=TAGS,
    params=FolderListParams,
    responses={200: ("A page of folders, by name.", FolderPage)},
    errors=(404, 422),
)
def list_folders(account_id: int):
    session = get_session()
    account = accounts.get_account(session, account_id)
    page = page_request(parse_query(FolderListParams), NAME)
    query = select(Folder).where(Folder.account_id == account.id).order_by(Folder.name)
    if page.after is not None:
        query = query.where(Folder.name > page.after)
    rows = list(session.scalars(query.limit(page.limit + 1)))
    items, cursor = paginate(rows, page.limit, key=lambda f: f.name, codec=NAME)
    return jsonify(
        {
            "items": [
                FolderOut(
                    name=f.name,
                    role=f.role,
                    messages=f.messages_count,
                    unread=f.unread_count,
                    last_synced_at=f.last_synced_at,
                ).model_dump(mode="json")
                for f in items
            ],
            "next_cursor": cursor,
        }
    )


@bp.delete("/<int:account_id>")
@operation(
    "Delete an account and all of its synced mail",
    tags=TAGS,
    responses={204: ("Deleted.", None)},
    errors=(404,),
)
def delete_account(account_id: int):
    session = get_session()
    accounts.delete_account(session, accounts.get_account(session, account_id))
    session.commit()
    return Response(status=204)

#!/usr/bin/env python3
"""Generate the tuneforge quickstart dataset: support tickets for Tallyworks, a fictional SaaS company.

Stdlib only, seeded and deterministic (the same --seed writes byte-identical files):

    python examples/support_tickets/generate.py --out DIR [--n 1200] [--seed 0]

Every ticket is written *from* its label (category, priority, product, sentiment, summary), so the
mapping is learnable: the template names the product, the summary is built from the same slot
values as the text, and priority and sentiment come with cue sentences. Files written to DIR:

- tickets.jsonl  chat-format training rows, with injected noise: ~5% exact/near duplicates,
                 PII in ~10% of rows, ~2% malformed lines
- golden.jsonl   ~100 held-out tickets (own seed stream; no shared 13-gram with training tickets)
- schema.json    JSON Schema (draft 2020-12) of the answer object
- general.jsonl  ~200 general instruction rows for mixing against catastrophic forgetting
- general_eval.jsonl  40 held-out general questions (not in the mix) for the forgetting check
- manifest.json  counts and, for every noisy line of tickets.jsonl, what was injected
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

COMPANY = "Tallyworks"
CATEGORIES = ["billing", "bug", "feature_request", "account", "how_to", "outage"]
PRIORITIES = ["low", "medium", "high", "urgent"]
PRODUCTS = ["dashboard", "mobile_app", "api", "billing_portal", "integrations"]
SENTIMENTS = ["negative", "neutral", "positive"]
SUMMARY_MAX_WORDS = 20
SUMMARY_MAX_CHARS = 160
PII_TYPES = ["email", "phone", "credit_card", "iban", "ip_address", "us_ssn", "url"]

SYSTEM_PROMPT = (
    f"You triage customer support tickets for {COMPANY}. Reply with only a JSON object, no other "
    "text, with exactly these keys: "
    f"\"category\" (one of: {', '.join(CATEGORIES)}), "
    f"\"priority\" (one of: {', '.join(PRIORITIES)}), "
    f"\"product\" (one of: {', '.join(PRODUCTS)}), "
    f"\"sentiment\" (one of: {', '.join(SENTIMENTS)}), "
    f"\"summary\" (one short English sentence of at most {SUMMARY_MAX_WORDS} words)."
)

# ----------------------------------------------------------------------------------- data tables
# product -> (how a customer names it, the noun a summary uses)
SURFACES = {
    "dashboard": [("the dashboard", "dashboard"), ("the web dashboard", "web dashboard"),
                  ("the Tallyworks dashboard", "dashboard"), ("the web app", "web app"),
                  ("the analytics dashboard", "analytics dashboard")],
    "mobile_app": [("the mobile app", "mobile app"), ("the iOS app", "iOS app"),
                   ("the Android app", "Android app"), ("the app on my phone", "mobile app"),
                   ("the Tallyworks app", "mobile app")],
    "api": [("the API", "API"), ("your REST API", "REST API"), ("the v2 API", "v2 API"),
            ("the public API", "API")],
    "billing_portal": [("the billing portal", "billing portal"), ("the billing page", "billing page"),
                       ("the subscription page", "subscription page"), ("the invoices page", "invoices page")],
    "integrations": [("the Shopify integration", "Shopify integration"),
                     ("the Slack integration", "Slack integration"), ("the Salesforce sync", "Salesforce sync"),
                     ("the QuickBooks connector", "QuickBooks connector"), ("the Zapier app", "Zapier app")],
}
FEATURES = {
    "dashboard": ["the reports page", "CSV export", "the sales chart", "saved filters", "the team overview",
                  "scheduled reports", "the date range picker", "custom widgets", "the inventory table"],
    "mobile_app": ["push notifications", "barcode scanning", "offline mode", "photo upload",
                   "the login screen", "background sync", "the order list", "the stock count screen"],
    "api": ["the /v2/orders endpoint", "webhooks", "the /v2/items endpoint", "the Python SDK",
            "the bulk import endpoint", "OAuth token refresh", "the /v2/customers search", "the Node SDK"],
    "billing_portal": ["invoice downloads", "the payment method form", "the plan upgrade flow",
                       "VAT settings", "receipt emails", "the seat counter", "the usage breakdown"],
    "integrations": ["the order import", "field mapping", "the nightly sync", "channel alerts",
                     "the connection settings", "refund sync", "product sync"],
}
WISHES = {
    "dashboard": ["dark mode", "PDF export of reports", "per-team dashboards", "weekly scheduled reports",
                  "custom KPI widgets", "a forecast chart", "comments on reports"],
    "mobile_app": ["an iPad layout", "Face ID login", "offline editing", "home screen widgets",
                   "bulk barcode scanning", "a tablet landscape mode"],
    "api": ["a GraphQL endpoint", "per-endpoint webhook secrets", "bulk update endpoints", "an official Go SDK",
            "higher rate limits for batch jobs", "a sandbox environment"],
    "billing_portal": ["payment by bank transfer", "separate invoices per department", "PO numbers on invoices",
                       "annual billing for the Team plan", "invoices in euros"],
    "integrations": ["a HubSpot integration", "two-way Salesforce sync", "Microsoft Teams alerts",
                     "refund sync from Shopify", "an Xero connector"],
}
TASKS = {
    "dashboard": ["export a report to CSV", "share a dashboard with a client", "set up a scheduled report",
                  "change the default currency", "add a custom widget", "filter sales by region"],
    "mobile_app": ["turn on offline mode", "scan barcodes in bulk", "switch between workspaces",
                   "enable push notifications", "reset the local cache"],
    "api": ["paginate through all orders", "verify webhook signatures", "rotate an API key without downtime",
            "filter orders by date", "create items in bulk"],
    "billing_portal": ["download all invoices for last year", "add a PO number to invoices",
                       "change the billing email", "switch to annual billing", "update our tax ID"],
    "integrations": ["map custom fields to Salesforce", "connect a second Shopify store",
                     "pick which Slack channel gets alerts", "re-run a failed sync"],
}

ALL = None  # a template that names the product through {p}, {f}, {wish} or {task}
# category -> (ticket core, summary, products the template fits)
TEMPLATES = {
    "billing": [
        ("I was charged twice for my {plan} plan this month, order {order}.",
         "Customer was charged twice for the {plan} plan, order {order}.", ("billing_portal",)),
        ("We downgraded to {plan} on {date} but invoice {inv} still bills us {amount}.",
         "Invoice {inv} still bills {amount} after downgrading to {plan} on {date}.", ("billing_portal",)),
        ("Can I get a refund for order {order}? We cancelled during the trial and were still charged {amount}.",
         "Customer wants a {amount} refund for order {order} charged after cancelling the trial.",
         ("billing_portal",)),
        ("Updating my card in {p} keeps failing with \"payment declined\", but the card works everywhere else.",
         "Card update in the {pn} fails with payment declined.", ("billing_portal", "mobile_app")),
        ("Our invoices don't show our VAT number and our accountant needs it on every invoice.",
         "Customer needs their VAT number shown on invoices.", ("billing_portal",)),
        ("Why did our bill jump from {amount} to {amount2}? Nobody added any seats.",
         "Customer asks why the bill rose from {amount} to {amount2} without new seats.", ("billing_portal",)),
        ("We were billed {amount} in overage fees for {p} but our usage graph shows we stayed under the limit.",
         "Customer disputes {amount} in {pn} overage fees despite usage under the limit.", ("api",)),
        ("I paid for the {plan} plan through the app store but {p} still shows the free tier.",
         "Paid {plan} subscription through the app store, but the {pn} still shows free tier.", ("mobile_app",)),
        ("Please send me a receipt for order {order}, I can't find it anywhere in {p}.",
         "Customer cannot find the receipt for order {order} in the {pn}.", ("billing_portal", "mobile_app")),
        ("The coupon code {coupon} gets rejected at checkout although it is valid until {date}.",
         "Valid coupon code {coupon} is rejected at checkout.", ("billing_portal",)),
        ("We are paying for {n} seats but only {m} people actually use the account.",
         "Customer is billed for {n} seats but only uses {m}.", ("billing_portal",)),
        ("We cancelled our subscription on {date} and you still charged {amount} this month.",
         "Customer was charged {amount} after cancelling the subscription on {date}.", ("billing_portal",)),
        ("{p} add-on is listed twice on invoice {inv}, we only have one connection.",
         "The {pn} add-on is billed twice on invoice {inv}.", ("integrations",)),
        ("Our API plan renewed at {amount2} instead of the {amount} we agreed on, see invoice {inv}.",
         "API plan renewed at {amount2} instead of the agreed {amount}, invoice {inv}.", ("api",)),
    ],
    "bug": [
        ("{p} crashes every time I open {f}.", "The {pn} crashes when opening {f}.", ("mobile_app", "dashboard")),
        ("The totals in {f} in {p} are wrong, they are off by about {pct}%.",
         "Totals in {f} in the {pn} are off by about {pct}%.", ("dashboard", "mobile_app", "billing_portal")),
        ("Since updating {p} to version {ver}, {f} no longer works on {os}.",
         "{f} stopped working on {os} after updating the {pn} to {ver}.", ("mobile_app",)),
        ("Requests using {f} fail with HTTP {http} and error {err}, even valid ones.",
         "Valid requests using {f} fail with HTTP {http} and error {err}.", ("api",)),
        ("When I click export in {f} nothing happens, the spinner just keeps going.",
         "Export in {f} hangs with an endless spinner.", ("dashboard",)),
        ("Webhooks from {p} arrive two or three times for the same event.",
         "Webhooks from the {pn} are delivered several times per event.", ("api",)),
        ("{p} imports every order twice {when}.", "The {pn} imports every order twice.", ("integrations",)),
        ("Dates in {f} are shifted by one day, looks like a timezone problem.",
         "Dates in {f} are off by one day, likely a timezone bug.",
         ("dashboard", "mobile_app", "billing_portal", "integrations")),
        ("{p} logs me out every few minutes while I'm working in {f}.",
         "The {pn} logs the user out every few minutes.", ("dashboard", "mobile_app", "billing_portal")),
        ("{p} stopped syncing orders {when}, the log shows error {err}.",
         "The {pn} stopped syncing orders with error {err}.", ("integrations",)),
        ("Loading {f} in {p} takes around {secs} seconds.",
         "Loading {f} takes about {secs} seconds in the {pn}.", ("dashboard", "mobile_app", "billing_portal")),
        ("Special characters like é and ü turn into question marks in {f}.",
         "Special characters are garbled in {f}.", ALL),
        ("The filter I set in {f} is ignored and every record is shown instead.",
         "Filters in {f} are ignored and all records are shown.", ("dashboard", "mobile_app")),
        ("{f} returns the same page of results over and over, the pagination never ends.",
         "Pagination on {f} repeats the same page endlessly.", ("api",)),
        ("Uploading a photo in {p} fails at 99% with error {err}.",
         "Photo upload in the {pn} fails at 99% with error {err}.", ("mobile_app",)),
        ("Field mapping in {p} resets to the defaults after every save.",
         "Field mapping in the {pn} resets after saving.", ("integrations",)),
        ("Downloading invoice {inv} from {p} gives me a blank PDF.",
         "Invoice {inv} downloads as a blank PDF from the {pn}.", ("billing_portal",)),
    ],
    "feature_request": [
        ("It would be great if {p} supported {wish}.", "Customer requests {wish} in the {pn}.", ALL),
        ("Any plans to add {wish} to {p}? We'd use it every day.",
         "Customer asks about plans for {wish} in the {pn}.", ALL),
        ("Feature request for {p}: {wish}.", "Feature request: {wish} in the {pn}.", ALL),
        ("Our team keeps asking for {wish} in {p}. Is that on the roadmap?",
         "Team asks whether the {pn} roadmap includes {wish}.", ALL),
        ("Could you consider adding {wish} to {p}? Right now we work around it with spreadsheets.",
         "Customer asks for {wish} in the {pn} to replace spreadsheet workarounds.", ALL),
        ("We would happily pay a bit more for {wish} in {p}.",
         "Customer would pay more for {wish} in the {pn}.", ALL),
        ("Other tools we use already have {wish}. Would love to see it in {p} too.",
         "Customer wants {wish} in the {pn}, as other tools offer.", ALL),
        ("Suggestion: {wish} for {p}. It would save us hours every week.",
         "Customer suggests {wish} for the {pn} to save time.", ALL),
    ],
    "account": [
        ("I can't log in to {p}, it says my account is locked after too many attempts.",
         "User is locked out of the {pn} after too many login attempts.",
         ("dashboard", "mobile_app", "billing_portal")),
        ("Please transfer ownership of our workspace in {p} from {name} to {name2}, {name} has left the company.",
         "Transfer workspace ownership from {name} to {name2}.", ("dashboard",)),
        ("I never get the password reset email when I request it from {p}.",
         "Password reset email from the {pn} never arrives.", ("dashboard", "mobile_app")),
        ("Two-factor codes from my authenticator app are always rejected by {p}.",
         "Two-factor codes are rejected at login to the {pn}.", ("dashboard", "mobile_app")),
        ("Please delete our {p} account and all stored data, we are closing the business.",
         "Customer requests deletion of the account and all stored data.", ("dashboard",)),
        ("I need to invite {n} more people but the invite button in {p} is greyed out.",
         "Invite button in the {pn} is disabled; customer needs {n} more users.", ("dashboard", "mobile_app")),
        ("Single sign-on with {idp} stopped working in {p}, users get \"invalid SAML response\".",
         "SSO via {idp} fails with an invalid SAML response.", ("dashboard",)),
        ("I signed up for {p} twice with different emails, can you merge the two accounts?",
         "Customer wants two duplicate accounts merged.", ("dashboard", "mobile_app")),
        ("Our API key was revoked without warning and {p} now answers 401 to everything.",
         "API key was revoked; the {pn} returns 401 for all requests.", ("api",)),
        ("A former employee, {name}, still has admin access to {p}. Please remove them.",
         "Remove admin access to the {pn} for former employee {name}.", ("dashboard", "billing_portal")),
        ("I can't change the billing contact in {p}, the field is locked for my role.",
         "User cannot change the billing contact because of role restrictions.", ("billing_portal",)),
        ("{p} asks me to authorize it again every single day, the login doesn't stick.",
         "The {pn} requires reauthorization every day.", ("integrations",)),
        ("Please change the email on my account, the old address no longer exists and I can't get into {p}.",
         "User needs the account email changed to regain access to the {pn}.", ("dashboard", "mobile_app")),
    ],
    "how_to": [
        ("How do I {task} in {p}?", "User asks how to {task} in the {pn}.", ALL),
        ("Quick question: is there a way to {task} in {p}?",
         "User asks whether they can {task} in the {pn}.", ALL),
        ("I've read the docs but still can't figure out how to {task} in {p}.",
         "User needs help to {task} in the {pn}.", ALL),
        ("Could someone walk me through how to {task} with {p}? Step by step would help.",
         "User wants step-by-step help to {task} in the {pn}.", ALL),
        ("What's the best way to {task}? We just started using {p}.",
         "New user asks the best way to {task} in the {pn}.", ALL),
        ("Is it possible to {task} from {p} myself, or do I need to contact you?",
         "User asks if they can {task} in the {pn} themselves.", ALL),
        ("where can i {task} in {p}", "User asks where to {task} in the {pn}.", ALL),
    ],
    "outage": [
        ("{p} is completely down for us, every page returns {http5}.",
         "The {pn} is down; every page returns {http5}.", ("dashboard", "billing_portal")),
        ("Is there an outage? {p} hasn't loaded for anyone in our office {when}.",
         "The {pn} has not loaded for the whole office {when}.", ("dashboard", "mobile_app", "billing_portal")),
        ("Every request to {p} is timing out {when}.", "All requests to the {pn} are timing out {when}.", ("api",)),
        ("None of our {n} users can log in to {p}, the login page only shows error {err}.",
         "No users can log in to the {pn}; the login page shows error {err}.", ("dashboard", "mobile_app")),
        ("Webhooks from {p} stopped arriving completely about {mins} minutes ago.",
         "Webhooks from the {pn} stopped arriving about {mins} minutes ago.", ("api",)),
        ("{p} has been dead for {hours} hours and orders are piling up in our store.",
         "The {pn} has been down for {hours} hours; orders are piling up.", ("integrations",)),
        ("Your status page says everything is green but {p} returns 502 for all of us.",
         "The {pn} returns 502 for everyone despite a green status page.", ALL),
        ("{p} won't connect to the server at all, \"Service unavailable\" on every device.",
         "The {pn} cannot connect; service unavailable on every device.", ("mobile_app",)),
        ("Nobody on our team can reach {p} {when}, we just get connection refused.",
         "Nobody can reach the {pn} {when}; connection refused.", ("dashboard", "api", "billing_portal")),
    ],
}

CATEGORY_WEIGHTS = {"billing": 20, "bug": 25, "feature_request": 13, "account": 15, "how_to": 15, "outage": 12}
PRIORITY_WEIGHTS = {  # low, medium, high, urgent
    "billing": (10, 45, 35, 10), "bug": (15, 40, 30, 15), "feature_request": (60, 40, 0, 0),
    "account": (10, 45, 35, 10), "how_to": (50, 45, 5, 0), "outage": (0, 0, 35, 65),
}
SENTIMENT_WEIGHTS = {  # negative, neutral, positive
    "billing": (50, 40, 10), "bug": (45, 40, 15), "feature_request": (5, 50, 45),
    "account": (35, 55, 10), "how_to": (5, 70, 25), "outage": (70, 30, 0),
}
STYLE_WEIGHTS = {"terse": 18, "casual": 20, "email": 30, "rant": 17, "non_native": 15}

# Phrase pools from here to ENV_DETAILS are split by _held_out(): the last quarter of each is used only by
# the golden set. Golden tickets share the ticket templates but not this boilerplate, so they share no
# 13-word n-gram with training tickets and the golden score rewards learning what a cue means over
# memorising the sentence.
PRIORITY_CUES = {
    "urgent": ["This is urgent, our whole team is blocked.", "We are losing sales every minute this continues.",
               "URGENT: this affects all of our customers right now.", "Please escalate this immediately.",
               "We need this fixed right now, production is affected.", "Every minute counts here, please hurry.",
               "Critical: our checkout depends on this.", "Drop everything please, nothing works for us."],
    "high": ["This is blocking our work, please look at it today.", "It affects most of our team, so we need a fix soon.",
             "We have a client demo tomorrow, so this is important.",
             "Please prioritise this, it is holding up our month-end close.",
             "Half of our staff can't do their job until this is fixed.",
             "Please treat this as high priority.", "We need an answer by end of day.",
             "This is stopping our warehouse team from working."],
    "medium": ["It would be good to get this sorted this week.", "Not critical, but it is annoying for the team.",
               "We can work around it for now, but please take a look.", "A fix in the next few days would be fine.",
               "It's a nuisance more than a blocker.", "Please have a look when your queue allows.",
               "Sometime this week would be great.", "It slows us down a little, so a fix would help."],
    "low": ["No rush at all.", "Just a minor thing, whenever you get a chance.", "Low priority, just wanted to flag it.",
            "Not urgent, only curious.", "Whenever someone has a spare moment.", "Totally fine if this takes a while.",
            "Only a small cosmetic thing, really.", "Please look at it whenever it suits you."],
}
SENTIMENT_CUES = {
    "negative": ["This is really frustrating.", "Honestly, I'm disappointed.", "Very poor experience so far.",
                 "This is the second time this month and I'm fed up.",
                 "I'm starting to regret switching to Tallyworks.", "Not impressed, to be honest.",
                 "This is unacceptable for a paid product.", "I'm losing patience with this."],
    "neutral": [""],
    "positive": ["Love the product otherwise, keep up the great work!", "You folks have been great so far, thanks!",
                 "Really enjoying Tallyworks, thanks for the help.", "Big fan of the app, thank you!",
                 "Your support has always been excellent, thank you.", "We're very happy customers otherwise!",
                 "Thanks a lot, you make our days easier.", "Keep up the good work, folks!"],
}
RANT_OPENERS = ["Unbelievable.", "What is going on with you people?!", "I am SO fed up.", "Seriously??",
                "Third email about this.", "Are you kidding me?", "Enough is enough."]
RANT_LINES = ["I pay for this and it doesn't even work!", "Nobody from your team answered my last two emails.",
              "How hard can this be?", "Fix it or I'm taking my business elsewhere.", "This is a joke.",
              "I want a real person to answer this.", "Do you even test your releases?", "Absolutely ridiculous."]
EMAIL_OPENERS = ["I hope you're doing well.", "I'm writing about a problem with {p}.",
                 "I'm reaching out on behalf of {company}.", "Thanks for your help last time.",
                 "I hope this is the right address for this.", "Hope your week is going well.",
                 "I'm contacting you about {p}.", "I work at {company} and look after our Tallyworks setup."]
NN_OPENERS = ["Hello sir,", "Dear team, I am writing for inform you that", "Respected support,",
              "Good day, I have one problem:", "Dear sir or madam,"]
NN_CLOSERS = ["Please do the needful.", "Waiting for your kind response.", "Thanking you in advance.",
              "Kindly revert back at earliest.", "Hoping for your quick reply.", "Kindly help me for this matter."]
DETAILS = {
    "billing": ["I've attached a screenshot of our bank statement.", "Our company is on the {plan} plan.",
                "We have used the same card for {years} years.",
                "Our finance team noticed it during the monthly reconciliation.",
                "The charge shows up on our statement from {date}.", "Our accountant flagged this yesterday.",
                "We have been customers for {years} years and never had this before.",
                "The amount was taken from our company card."],
    "bug": ["I already tried clearing the cache and logging out and in again.", "It started right after the last update.",
            "A colleague can reproduce it on her machine too.", "It happens roughly every other time.",
            "Steps to reproduce: open {f}, change any value, save.", "It worked fine until last week.",
            "We see it on every account in our workspace.", "Restarting doesn't change anything.",
            "I can send a screen recording if that helps."],
    "feature_request": ["We have about {n} people using Tallyworks every day.",
                        "Right now we export everything to Excel to get around this.",
                        "I think a lot of retail customers would find it useful.",
                        "It came up again in our team meeting this week.", "We'd be glad to beta test it.",
                        "Our old tool had something similar and we miss it.",
                        "Several of our store managers asked me about it."],
    "account": ["I've tried two different browsers.", "We're on the {plan} plan.", "I checked the spam folder already.",
                "I'm the admin of our workspace.", "I have been a user for {years} years.",
                "Nothing changed on our side as far as I know.", "Our IT team can confirm who I am.",
                "I also tried from my phone."],
    "how_to": ["I searched the help center but couldn't find an article on this.",
               "We're on the {plan} plan, in case that matters.", "A screenshot or a short video would be perfect.",
               "I'm new to Tallyworks, so sorry if this is obvious.", "A link to the right doc is enough.",
               "My manager asked me to set this up today.", "The old guide seems to describe a previous version."],
    "outage": ["We already restarted everything on our side.", "Our internet is fine, every other site works.",
               "Colleagues in other cities see the same thing.", "Your status page doesn't mention anything.",
               "It was working fine an hour ago.", "We tried from different networks, same result.",
               "None of our stores can process anything right now.", "Our IT team says nothing changed here."],
}
ENV_DETAILS = {
    "dashboard": ["I'm using {browser} on {desktop_os}.", "Tried in {browser} and in a private window, same result.",
                  "Our admins see it on {desktop_os} as well.", "Browser: {browser}, latest version."],
    "mobile_app": ["I'm on a {device} running {os}, app version {ver}.", "Reinstalling the app didn't help.",
                   "Phone: {device}.", "Logging out of the app and back in changes nothing."],
    "api": ["Request ID: {reqid}.", "We call it from a Python 3.12 service using the official SDK.",
            "Our integration has been live for {years} years.", "The last request ID was {reqid}."],
    "integrations": ["Our store gets about {n} orders a day.", "Disconnecting and reconnecting didn't help.",
                     "The connection was set up by our agency.", "We run {n} locations on it."],
    "billing_portal": ["I'm logged in as the account owner.", "I'm using {browser}.",
                       "Our billing contact is out this week, so I'm handling it.", "Browser: {browser}."],
}
TERSE_PRIORITY = {"urgent": ["URGENT", "asap!!", "urgent pls", "need this fixed NOW"],
                  "high": ["need this today", "pls fix soon, blocking us", "important"],
                  "medium": ["", "", "when you can this week"], "low": ["no rush", "minor", "not urgent"]}
TERSE_SENTIMENT = {"negative": ["ugh.", "so annoying", "fix this."], "neutral": [""],
                   "positive": ["thx, love the app!", "great product btw :)"]}
GREETINGS = ["Hi team,", "Hello,", "Dear Tallyworks Support,", "Hi there,", "Good morning,", "Dear support team,"]
SIGNOFFS = ["Best regards,", "Kind regards,", "Thanks,", "Cheers,", "Best,", "Many thanks,"]
CASUAL_OPENERS = ["hey,", "hi!", "hello -", "", "Hey team,"]
CASUAL_CLOSERS = ["thx", "thanks!", "cheers", "", "ty"]
SWAPS = [("can't", "cannot"), ("Please", "Pls"), ("please", "pls"), ("every", "each"), ("but", "however"),
         ("Thanks", "Thank you"), ("I'm", "I am"), ("don't", "do not")]  # near-duplicate word changes
NN_REPLACE = [("I can't", "I am not able to"), ("can't", "is not able to"), ("doesn't", "is not"),
              ("don't", "do not"), ("Please", "Kindly"), ("since ", "from since "), ("I need", "I am needing"),
              ("We are", "We are being"), ("it says", "it is telling")]
TRACES = {
    "api": ('Traceback (most recent call last):\n  File "sync_orders.py", line {line}, in push_batch\n'
            "    resp = client.orders.create(payload)\n"
            '  File "/usr/lib/python3.12/site-packages/tallyworks/client.py", line 214, in create\n'
            "    raise ApiError(resp.status_code, resp.json())\n"
            'tallyworks.errors.ApiError: {http} {{"code": "{err}", "message": "request failed"}}'),
    "integrations": ("{stamp} ERROR sync.worker order_import failed: {err} (attempt 3/3)\n"
                     "{stamp} WARN  sync.worker giving up, {n} orders left in queue"),
    "dashboard": ("TypeError: Cannot read properties of undefined (reading 'total')\n"
                  "    at renderChart (app.3f9a1c.js:1:{line}8)\n    at ReportView.update (app.3f9a1c.js:1:9921)"),
    "mobile_app": ("Fatal Exception: java.lang.IllegalStateException: {err}\n"
                   "    at com.tallyworks.app.sync.SyncWorker.doWork(SyncWorker.kt:{line})\n"
                   "    at androidx.work.CoroutineWorker$startWork$1.invokeSuspend(CoroutineWorker.kt:68)"),
    "billing_portal": ("Uncaught (in promise) Error: {err}\n    at submitPayment (checkout.8be21.js:2:{line}4)"),
}
PII_SENTENCES = {
    "email": ["You can reach me at {email}.", "Please reply to {email}, not the account address.",
              "My login email is {email}."],
    "phone": ["Call me on {phone} if that's easier.", "My number is {phone}.", "Feel free to phone me at {phone}."],
    "credit_card": ["My card {cc} was charged.", "I paid with the card {cc}.", "The card on file is {cc}."],
    "iban": ["Please send any refund to our IBAN {iban}.", "Our bank account is IBAN {iban}."],
    "ip_address": ["Our server IP is {ip}, maybe it's blocked?", "The requests come from {ip}."],
    "us_ssn": ["My SSN is {ssn} if you need to verify who I am.", "For verification, my social security number is {ssn}."],
    "url": ["Here is a screen recording: {url}", "I put screenshots here: {url}"],
}
FIRST = ["Maria", "James", "Aisha", "Chen", "Lukas", "Priya", "Tom", "Sofia", "Kwame", "Elena", "Raj", "Hannah",
         "Diego", "Yuki", "Omar", "Grace", "Mateo", "Ingrid", "Arjun", "Fatima"]
LAST = ["Garcia", "Smith", "Khan", "Wang", "Becker", "Patel", "Nguyen", "Rossi", "Mensah", "Ivanova", "Okafor",
        "Jensen", "Silva", "Tanaka", "Haddad", "Murphy"]
COMPANIES = ["Acme Retail", "Northwind Goods", "Bluebird Coffee", "Pinecrest Outdoor", "Lumen Labs",
             "Harbor & Co", "Redwood Supplies", "Orbit Apparel"]
SLOT_VALUES = {
    "plan": ["Starter", "Team", "Business", "Enterprise"], "idp": ["Okta", "Azure AD", "Google Workspace"],
    "when": ["since this morning", "since yesterday", "since the last update", "for the past two hours",
             "since 9am", "since Monday"],
    "browser": ["Chrome", "Firefox", "Safari", "Edge"], "desktop_os": ["Windows 11", "macOS Sonoma", "Ubuntu 24.04"],
    "device": ["Pixel 8", "Galaxy S23", "iPhone 15", "iPhone 13", "OnePlus 12"],
    "date": ["March 3", "April 14", "May 28", "June 2", "the 1st", "last Friday"],
    "http": ["400", "409", "422", "500"], "http5": ["500", "502", "503", "504"],
}
EMAIL_DOMAINS = ["example.com", "gmail.com", "outlook.com", "acme-retail.com", "northwind.io"]
GENERAL_SYSTEM = "You are a helpful assistant."
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
            ("Brazil", "Brasília"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Germany", "Berlin"),
            ("Italy", "Rome"), ("Spain", "Madrid"), ("India", "New Delhi"), ("Mexico", "Mexico City"),
            ("Norway", "Oslo"), ("Poland", "Warsaw"), ("Argentina", "Buenos Aires"), ("Turkey", "Ankara"),
            ("South Korea", "Seoul"), ("Portugal", "Lisbon"), ("Peru", "Lima"), ("Sweden", "Stockholm")]
DEFINITIONS = [("photosynthesis", "the process by which plants use sunlight, water and carbon dioxide to make "
                "glucose and release oxygen"),
               ("an invoice", "a document from a seller listing goods or services provided and the amount owed"),
               ("a prime number", "a whole number greater than 1 whose only divisors are 1 and itself"),
               ("gravity", "the force by which masses attract one another"),
               ("a noun", "a word that names a person, place, thing or idea"),
               ("inflation", "a general rise in prices over time, which lowers the purchasing power of money"),
               ("an API", "a defined interface that lets one piece of software request services from another"),
               ("a verb", "a word that describes an action, state or occurrence"),
               ("evaporation", "the change of a liquid into a gas, usually by heating"),
               ("a budget", "a plan for how much money will be earned and spent over a period")]
ANTONYMS = [("hot", "cold"), ("early", "late"), ("happy", "sad"), ("open", "closed"), ("increase", "decrease"),
            ("ancient", "modern"), ("generous", "stingy"), ("expand", "shrink"), ("victory", "defeat"),
            ("rough", "smooth"), ("accept", "reject"), ("visible", "invisible")]
SENTENCES = ["the quick brown fox jumps over the lazy dog", "our meeting moved to thursday afternoon",
             "please send the report before noon", "the team shipped the new release yesterday",
             "rain is expected in the north tomorrow", "she bought three apples and a melon"]


# ----------------------------------------------------------------------------------------- helpers
def _weighted(rng: random.Random, options: list[str], weights) -> str:
    return rng.choices(options, weights=list(weights), k=1)[0]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):  # the check digit will sit right of these
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return digits + str((10 - total % 10) % 10)


def _iban(rng: random.Random) -> str:
    country, bban = rng.choice([("DE", "".join(rng.choice("0123456789") for _ in range(18))),
                                ("GB", "NWBK" + "".join(rng.choice("0123456789") for _ in range(14))),
                                ("FR", "".join(rng.choice("0123456789") for _ in range(23)))])
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.6 else iban


def _pii_value(rng: random.Random, kind: str, first: str, last: str) -> str:
    digits = lambda k: "".join(rng.choice("0123456789") for _ in range(k))  # noqa: E731
    if kind == "email":
        return f"{first}.{last}@{rng.choice(EMAIL_DOMAINS)}".lower()
    if kind == "phone":
        return rng.choice([f"+1 (415) 555-{digits(4)}", f"+44 20 7946 {digits(4)}", f"+49 30 {digits(7)}",
                           f"212-555-{digits(4)}"])
    if kind == "credit_card":
        prefix = rng.choice(["4", "51", "52", "55"])
        num = _luhn_complete(prefix + digits(15 - len(prefix)))
        sep = rng.choice([" ", "-", ""])
        return sep.join(num[i:i + 4] for i in range(0, 16, 4))
    if kind == "iban":
        return _iban(rng)
    if kind == "ip_address":
        return f"{rng.randint(23, 212)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
    if kind == "us_ssn":
        return f"{rng.randint(101, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}"
    return rng.choice([f"https://www.loom.com/share/{digits(6)}{first.lower()}",
                       f"https://drive.google.com/file/d/{digits(10)}/view",
                       f"https://{first.lower()}{last.lower()}.dev/tallyworks-bug"])


def _slots(rng: random.Random, product: str) -> dict[str, str]:
    p, pn = rng.choice(SURFACES[product])
    s = {k: rng.choice(v) for k, v in SLOT_VALUES.items()}
    amount = rng.choice([29, 49, 79, 99, 149, 249, 499, 1200])
    s.update(p=p, pn=pn, f=rng.choice(FEATURES[product]), wish=rng.choice(WISHES[product]),
             task=rng.choice(TASKS[product]), company=rng.choice(COMPANIES),
             order=f"#TW-{rng.randint(10000, 99999)}",
             inv=f"INV-{rng.randint(2023, 2025)}-{rng.randint(1, 9999):04d}",
             amount=f"${amount}.00", amount2=f"${amount + rng.choice([20, 50, 100, 300])}.00",
             coupon=rng.choice(["SPRING", "WELCOME", "LAUNCH", "PARTNER"]) + str(rng.randint(10, 50)),
             n=str(rng.randint(5, 60)), m=str(rng.randint(2, 4)), pct=str(rng.choice([5, 10, 12, 20, 30])),
             err=rng.choice(["E-4032", "E-5021", "ERR_SYNC_TIMEOUT", "TW-5003", "AUTH_INVALID_TOKEN", "E-1107"]),
             ver=f"{rng.randint(3, 5)}.{rng.randint(0, 19)}.{rng.randint(0, 9)}", secs=str(rng.randint(15, 90)),
             mins=str(rng.choice([10, 20, 30, 45])), hours=str(rng.randint(2, 9)), years=str(rng.randint(2, 6)),
             reqid="req_" + "".join(rng.choice("0123456789abcdef") for _ in range(12)),
             line=str(rng.randint(40, 400)),
             stamp=f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T0{rng.randint(1, 9)}:14:03Z",
             name=f"{rng.choice(FIRST)} {rng.choice(LAST)}", name2=f"{rng.choice(FIRST)} {rng.choice(LAST)}")
    s["os"] = rng.choice([o for o in ["iOS 17.4", "Android 14"] if o.split()[0] in p] or ["iOS 17.4", "Android 14"])
    s["device"] = rng.choice([d for d in SLOT_VALUES["device"] if d.startswith("iPhone") == s["os"].startswith("iOS")])
    if s["name2"] == s["name"]:
        s["name2"] = "Grace Okafor" if s["name"] != "Grace Okafor" else "Tom Rossi"
    return s


def _typos(rng: random.Random, text: str, k: int) -> str:
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4 and w[1:].islower()]  # not codes
    for i in rng.sample(spots, min(k, len(spots))):
        w, j = words[i], rng.randrange(1, len(words[i]) - 1)
        op = rng.randrange(3)
        words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:] if op == 0 else w[:j] + w[j + 1:] if op == 1
                    else w[:j] + w[j] + w[j:])
    return " ".join(words)


# ----------------------------------------------------------------------------------------- tickets
def _held_out(pool: list[str], golden: bool) -> list[str]:
    """Training phrasings (first three quarters) or golden-only phrasings (last quarter) of a pool."""
    if len(pool) < 4:
        return pool
    cut = len(pool) - len(pool) // 4
    return pool[cut:] if golden else pool[:cut]


def _compose(rng: random.Random, label: dict, core: str, slots: dict, pii: list[str], golden: bool) -> str:
    """Render one ticket in a random style; cue sentences carry priority and sentiment into the text."""
    category, product = label["category"], label["product"]
    pick = lambda pool: rng.choice(_held_out(pool, golden))  # noqa: E731
    fmt = lambda s: s.format(**slots)  # noqa: E731
    style = _weighted(rng, list(STYLE_WEIGHTS), STYLE_WEIGHTS.values())
    if style == "rant" and label["sentiment"] != "negative":
        style = "casual"
    pii_lines = [fmt(rng.choice(PII_SENTENCES[k])) for k in pii]
    if style == "terse":
        pri, sen = rng.choice(TERSE_PRIORITY[label["priority"]]), rng.choice(TERSE_SENTIMENT[label["sentiment"]])
        body = core.rstrip(".") if rng.random() < 0.6 else core
        if rng.random() < 0.5:
            body = body[:1].lower() + body[1:]
        parts = [body, *pii_lines, pri, sen]
        return _typos(rng, " ".join(p for p in parts if p), rng.choice([0] * 6 + [1, 1, 2]))
    prose = [core]
    pool = _held_out(DETAILS[category], golden) + _held_out(ENV_DETAILS[product], golden)
    k = rng.choice([0, 1, 1, 2, 3] if style == "email" else [0, 0, 1, 2])
    prose += [fmt(d) for d in rng.sample(pool, min(k, len(pool)))]
    if category in ("bug", "outage") and slots["err"] not in core and rng.random() < 0.25:
        prose.append(fmt(rng.choice(["The error says {err}.", "Error code: {err}.", "I get {err} every time."])))
    trace = fmt(TRACES[product]) if category in ("bug", "outage") and rng.random() < 0.2 else ""
    prose += pii_lines
    cues = [pick(PRIORITY_CUES[label["priority"]]), pick(SENTIMENT_CUES[label["sentiment"]])]
    if label["priority"] == "medium" and rng.random() < 0.3:
        cues[0] = ""  # medium is the default: often nothing says it
    rng.shuffle(cues)
    prose += [c for c in cues if c]
    if style == "rant":
        lines = _held_out(RANT_LINES, golden)
        prose = [pick(RANT_OPENERS), *prose, *rng.sample(lines, min(len(lines), rng.randint(1, 2)))]
        keep_case = [s in pii_lines for s in prose]  # shouting must not change emails or URLs
        prose = [re.sub(r"\.$", rng.choice(["!", "!!", "!!!"]), s) for s in prose]
        text = " ".join(s.upper() if rng.random() < 0.15 and not keep else s
                        for s, keep in zip(prose, keep_case, strict=True))
    elif style == "non_native":
        text = " ".join(prose)
        for old, new in NN_REPLACE:
            if old in text and rng.random() < 0.6:
                text = text.replace(old, new, 1)
        text = f"{pick(NN_OPENERS)} {text} {pick(NN_CLOSERS)}"
    elif style == "casual":
        text = " ".join(x for x in [rng.choice(CASUAL_OPENERS), *prose, rng.choice(CASUAL_CLOSERS)] if x)
    else:  # email: greeting, one or two paragraphs, sign-off
        opener = fmt(pick(EMAIL_OPENERS)) if rng.random() < 0.7 else ""
        split = rng.randint(1, len(prose))
        paras = [" ".join(x for x in [opener, *prose[:split]] if x), " ".join(prose[split:])]
        sign = f"{rng.choice(SIGNOFFS)}\n{rng.choice(FIRST)}"
        sign += f"\n{slots['company']}" if rng.random() < 0.4 else ""
        text = "\n\n".join(p for p in [rng.choice(GREETINGS), *paras, sign] if p)
    text = _typos(rng, text, rng.choice([0] * 7 + [1, 1, 2]))
    return f"{text}\n\n{trace}" if trace else text


def make_ticket(rng: random.Random, category: str, pii: list[str] | None = None,
                golden: bool = False) -> tuple[str, dict]:
    """One (ticket text, label) pair; the text is written from the label."""
    weights = [sum(1 for t in TEMPLATES[category] if t[2] is ALL or p in t[2]) for p in PRODUCTS]
    product = _weighted(rng, PRODUCTS, weights)
    core, summary, _ = rng.choice([t for t in TEMPLATES[category] if t[2] is ALL or product in t[2]])
    slots = _slots(rng, product)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    for kind in pii or []:
        key = {"credit_card": "cc", "ip_address": "ip", "us_ssn": "ssn"}.get(kind, kind)
        slots[key] = _pii_value(rng, kind, first, last)
    label = {"category": category,
             "priority": _weighted(rng, PRIORITIES, PRIORITY_WEIGHTS[category]),
             "product": product,
             "sentiment": _weighted(rng, SENTIMENTS, SENTIMENT_WEIGHTS[category]),
             "summary": _cap(summary.format(**slots))}
    assert len(label["summary"].split()) <= SUMMARY_MAX_WORDS and len(label["summary"]) <= SUMMARY_MAX_CHARS
    return _compose(rng, label, _cap(core.format(**slots)), slots, pii or [], golden), label


def answer_json(label: dict) -> str:
    return json.dumps(label, ensure_ascii=False, separators=(",", ":"))


def _chat(text: str, label: dict) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text},
                         {"role": "assistant", "content": answer_json(label)}]}


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _ngrams(text: str, k: int) -> set[tuple[str, ...]]:
    w = _norm(text).split()
    return {tuple(w[i:i + k]) for i in range(max(1, len(w) - k + 1))}


class _NearIndex:
    """Jaccard similarity of word 3-gram sets against everything added so far (inverted index)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.index: dict[tuple[str, ...], list[int]] = {}

    def max_similarity(self, text: str) -> float:
        grams, shared = _ngrams(text, 3), {}
        for g in grams:
            for i in self.index.get(g, ()):
                shared[i] = shared.get(i, 0) + 1
        return max((c / (len(grams) + self.sizes[i] - c) for i, c in shared.items()), default=0.0)

    def add(self, text: str) -> None:
        for g in _ngrams(text, 3):
            self.index.setdefault(g, []).append(len(self.sizes))
        self.sizes.append(len(_ngrams(text, 3)))


def _near_duplicate(rng: random.Random, text: str, has_pii: bool) -> tuple[str, str]:
    kind = rng.choice(["exact", "exact", "case", "whitespace", "word_change", "word_added"])
    if kind == "case" and has_pii:  # keep IBANs and URLs in their real case
        kind = "whitespace"
    if kind == "exact":
        return kind, text
    if kind == "case":
        return kind, text.lower() if text != text.lower() else text.upper()
    if kind == "whitespace":
        return kind, "  " + text.replace(" ", "  ", 2).replace("\n\n", "\n") + " \n"
    if kind == "word_change":
        swaps = [(a, b) for a, b in SWAPS if re.search(rf"\b{re.escape(a)}\b", text)]
        if swaps:
            a, b = rng.choice(swaps)
            return kind, re.sub(rf"\b{re.escape(a)}\b", b, text, count=1)
        kind = "word_added"
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w.isalpha() and not (i and re.search(r"\d", words[i - 1]))]
    i = rng.choice(spots or [0])  # never inside a number, card or IBAN
    words.insert(i, rng.choice(["really", "just", "honestly", "still", "again"]))
    return "word_added", " ".join(words) + rng.choice(["", " Thanks!", " Any update?"])


def _malformed(rng: random.Random, kind: str, text: str, label: dict) -> str:
    row = _chat(text, label)
    if kind == "truncated_json":
        line = json.dumps(row, ensure_ascii=False)
        return line[: rng.randint(len(line) // 4, len(line) * 3 // 4)]
    if kind == "empty_assistant":
        row["messages"][2]["content"] = ""
    elif kind == "double_user":
        follow_up = rng.choice(["Any update on this?", "Hello??", "Adding my colleague to this thread."])
        row["messages"].insert(2, {"role": "user", "content": follow_up})
    else:  # missing_messages: the key is misspelt, a typical hand-edited export
        row = {"mesages": row["messages"]}
    return json.dumps(row, ensure_ascii=False)


def schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://tuneforge.dev/examples/support_tickets/schema.json",
        "title": "Support ticket triage",
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": CATEGORIES},
            "priority": {"type": "string", "enum": PRIORITIES},
            "product": {"type": "string", "enum": PRODUCTS},
            "sentiment": {"type": "string", "enum": SENTIMENTS},
            "summary": {"type": "string", "minLength": 1, "maxLength": SUMMARY_MAX_CHARS},
        },
        "required": ["category", "priority", "product", "sentiment", "summary"],
        "additionalProperties": False,
    }


def _general(rng: random.Random, k: int) -> list[dict]:
    """Template-made general instructions with answers that are correct by construction."""
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < k:
        t = rng.randrange(7)
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if t == 0:
            c, cap = rng.choice(CAPITALS)
            q = rng.choice(["What is the capital of {}?", "Name the capital city of {}."]).format(c)
            ans = f"The capital of {c} is {cap}."
        elif t == 1:
            op = rng.choice(["+", "-", "*"])
            val = a + b if op == "+" else a - b if op == "-" else a * b
            q = rng.choice(["What is {} {} {}?", "Compute {} {} {}.", "Calculate {} {} {}."]).format(a, op, b)
            ans = f"{a} {op} {b} = {val}"
        elif t == 2:
            term, d = rng.choice(DEFINITIONS)
            q = rng.choice(["Define {}.", "What is {}?", "Explain in one sentence what {} is."]).format(term)
            ans = f"{_cap(term)} is {d}."
        elif t == 3:
            w, o = rng.choice(ANTONYMS)
            q, ans = f"What is the opposite of \"{w}\"?", f"The opposite of \"{w}\" is \"{o}\"."
        elif t == 4:
            s = rng.choice(SENTENCES)
            mode = rng.choice(["uppercase", "title case", "a sentence with a capital letter and a full stop"])
            out = s.upper() if mode == "uppercase" else s.title() if mode == "title case" else _cap(s) + "."
            q, ans = f"Rewrite this in {mode}: {s}", out
        elif t == 5:
            s = rng.choice(SENTENCES)
            q, ans = f"How many words are in this sentence: \"{s}\"?", f"It has {len(s.split())} words."
        else:
            km = rng.randint(2, 40)
            unit, factor, to = rng.choice([("kilometres", 1000, "metres"), ("hours", 60, "minutes"),
                                           ("kilograms", 1000, "grams"), ("minutes", 60, "seconds")])
            q, ans = f"How many {to} are in {km} {unit}?", f"{km} {unit} is {km * factor} {to}."
        if q in seen:
            continue
        seen.add(q)
        rows.append({"messages": [{"role": "system", "content": GENERAL_SYSTEM}, {"role": "user", "content": q},
                                  {"role": "assistant", "content": ans}]})
    return rows


def _write_jsonl(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def generate(out_dir: Path, n: int = 1200, seed: int = 0, n_golden: int = 100, n_general: int = 200) -> dict:
    """Write the dataset files into out_dir and return their counts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"tuneforge-support-tickets/train/{seed}")
    n_dup, n_bad = round(n * 0.05), round(n * 0.02)
    n_base = n - n_dup - n_bad
    pii_rows = set(rng.sample(range(n_base), round(n_base * 0.10)))

    # 1) unique base tickets (no exact or close duplicates among themselves)
    base: list[tuple[str, dict, list[str]]] = []
    near, seen = _NearIndex(), set()
    while len(base) < n_base:
        pii = sorted(rng.sample(PII_TYPES, rng.choice([1, 1, 1, 2]))) if len(base) in pii_rows else []
        text, label = make_ticket(rng, _weighted(rng, CATEGORIES, CATEGORY_WEIGHTS.values()), pii)
        if _norm(text) in seen or near.max_similarity(text) >= 0.7:
            continue
        seen.add(_norm(text))
        near.add(text)
        base.append((text, label, pii))

    # 2) injected duplicates and malformed rows, placed at random positions
    rows: list[tuple[str, dict, dict]] = [(t, lab, {"pii": p} if p else {}) for t, lab, p in base]
    for _ in range(n_dup):
        src = rng.randrange(n_base)
        kind, text = _near_duplicate(rng, base[src][0], bool(base[src][2]))
        info = {"duplicate_of": src, "duplicate": kind} | ({"pii": base[src][2]} if base[src][2] else {})
        rows.append((text, base[src][1], info))
    bad_kinds = ["truncated_json", "empty_assistant", "double_user", "missing_messages"]
    for i in range(n_bad):
        text, label = make_ticket(rng, _weighted(rng, CATEGORIES, CATEGORY_WEIGHTS.values()))
        rows.append((text, label, {"malformed": bad_kinds[i % len(bad_kinds)]}))
    order = list(range(len(rows)))
    rng.shuffle(order)
    line_of = {src: line for line, src in enumerate(order, start=1)}
    lines, noise = [], []
    for line, idx in enumerate(order, start=1):
        text, label, info = rows[idx]
        if "malformed" in info:
            lines.append(_malformed(rng, info["malformed"], text, label))
        else:
            lines.append(json.dumps(_chat(text, label), ensure_ascii=False))
        if info:
            if "duplicate_of" in info:
                info = {**info, "duplicate_of": line_of[info["duplicate_of"]]}
            noise.append({"line": line, **info})

    # 3) golden set: own seed stream, clean, category-balanced, no 13-gram shared with any training ticket
    grng = random.Random(f"tuneforge-support-tickets/golden/{seed}")
    train_grams = set().union(*(_ngrams(t, 13) for t, _, _ in rows))
    golden, gseen = [], set(seen)
    cats = CATEGORIES * (n_golden // len(CATEGORIES) + 1)
    grng.shuffle(cats)
    while len(golden) < n_golden:
        text, label = make_ticket(grng, cats[len(golden)], golden=True)
        if _norm(text) in gseen or _ngrams(text, 13) & train_grams or near.max_similarity(text) >= 0.5:
            continue
        gseen.add(_norm(text))
        golden.append({"id": f"golden-{len(golden) + 1:04d}",
                       "messages": _chat(text, label)["messages"][:2],
                       "expected": answer_json(label), "category": label["category"], "schema": "schema.json"})

    general = _general(random.Random(f"tuneforge-support-tickets/general/{seed}"), n_general)
    # Held-out general questions for the forgetting check: none of them is in the training mix. The
    # forgetting score compares answers with the base model's own (generated once by evaluation);
    # the correct-by-construction answers kept here score the suite's other metrics.
    mixed = {g["messages"][1]["content"] for g in general}
    general_eval = [g for g in
                    _general(random.Random(f"tuneforge-support-tickets/general-eval/{seed}"), n_general + 40)
                    if g["messages"][1]["content"] not in mixed][:40]
    dup_kinds = [x["duplicate"] for x in noise if "duplicate" in x]
    counts = {
        "rows": len(lines), "unique_tickets": n_base,
        "duplicates": len(dup_kinds), "exact_duplicates": dup_kinds.count("exact"),
        "near_duplicates": len(dup_kinds) - dup_kinds.count("exact"),
        "pii_rows": sum(1 for x in noise if "pii" in x),
        "malformed_rows": sum(1 for x in noise if "malformed" in x),
        "golden": len(golden), "general": len(general), "general_eval": len(general_eval),
        "categories": {c: sum(1 for _, lab, _ in base if lab["category"] == c) for c in CATEGORIES},
    }
    _write_jsonl(out_dir / "tickets.jsonl", lines)
    _write_jsonl(out_dir / "golden.jsonl", [json.dumps(g, ensure_ascii=False) for g in golden])
    _write_jsonl(out_dir / "general.jsonl", [json.dumps(g, ensure_ascii=False) for g in general])
    _write_jsonl(out_dir / "general_eval.jsonl", [json.dumps(g, ensure_ascii=False) for g in general_eval])
    (out_dir / "schema.json").write_text(json.dumps(schema(), indent=2) + "\n", encoding="utf-8")
    manifest = {"generator": "examples/support_tickets/generate.py", "seed": seed, "n": n, "counts": counts,
                "system_prompt": SYSTEM_PROMPT, "noise": noise}
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    (out_dir / "manifest.json").write_text(text + "\n", encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--n", type=int, default=1200, help="rows in tickets.jsonl, noise included (default 1200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--golden", type=int, default=100, help="golden tickets (default 100)")
    ap.add_argument("--general", type=int, default=200, help="general instruction rows (default 200)")
    args = ap.parse_args(argv)
    if args.n < 50:
        ap.error("--n must be at least 50")
    c = generate(args.out, args.n, args.seed, args.golden, args.general)
    print(f"wrote {args.out}/tickets.jsonl: {c['rows']} rows ({c['unique_tickets']} unique tickets, "
          f"{c['duplicates']} injected duplicates [{c['exact_duplicates']} exact, {c['near_duplicates']} near], "
          f"{c['pii_rows']} rows with PII, {c['malformed_rows']} malformed)")
    print(f"wrote {args.out}/golden.jsonl: {c['golden']} rows; general.jsonl: {c['general']} rows; "
          "schema.json; manifest.json")
    print("categories: " + ", ".join(f"{k}={v}" for k, v in c["categories"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

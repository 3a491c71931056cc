"""Seeds Redis for the DeepTrace demo workload: item:<sku> JSON documents (the
catalog's cache, same content as catalog.js item()) and search:<word> sorted
sets. Usage: seed_redis.py REDIS_URL"""

import json
import sys

import redis

NUM_SKUS = 10000
WORDS = ["lamp", "chair", "desk", "mug", "cable", "phone", "shoe", "book", "pen", "bag", "clock", "plant"]


def item(sku):
    return {"sku": sku, "name": "item-%d" % sku, "price_cents": 100 + (sku * 37) % 9900, "tags": ["t%d" % (sku % 17)]}


def main():
    r = redis.Redis.from_url(sys.argv[1])
    p = r.pipeline(transaction=False)
    for sku in range(1, NUM_SKUS + 1):
        p.set("item:%d" % sku, json.dumps(item(sku), separators=(",", ":")), ex=86400)
        if sku % 500 == 0:
            p.execute()
    for i, w in enumerate(WORDS):
        key = "search:" + w
        p.delete(key)
        p.zadd(key, {str((i * 811 + k * 97) % NUM_SKUS + 1): (k * 7919) % 1000 for k in range(60)})
    p.execute()
    print("redis seeded: %d items, %d search terms" % (NUM_SKUS, len(WORDS)))


if __name__ == "__main__":
    main()

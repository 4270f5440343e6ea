// SPDX-License-Identifier: MIT
#include "user/arena.hpp"

#include <sys/mman.h>

#include <bit>

namespace aem::detail {

Arena::Arena(size_t bytes) {
  unsigned order = kMinOrder;
  while ((size_t{1} << order) < bytes && order < 40) ++order;
  const size_t size = size_t{1} << order;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) return;
  base_ = static_cast<unsigned char*>(p);
  max_order_ = order;
  free_.assign(order + 1, nullptr);
  tag_.assign(size >> kMinOrder, 0);
  push(order, reinterpret_cast<FreeBlock*>(base_));
}

Arena::~Arena() {
  if (base_) munmap(base_, capacity());
}

size_t Arena::index(const void* p) const {
  return static_cast<size_t>(static_cast<const unsigned char*>(p) - base_) >> kMinOrder;
}

bool Arena::owns(const void* p) const {
  const auto* c = static_cast<const unsigned char*>(p);
  return base_ && c >= base_ && c < base_ + capacity();
}

void Arena::push(unsigned order, FreeBlock* b) {
  b->prev = nullptr;
  b->next = free_[order];
  if (b->next) b->next->prev = b;
  free_[order] = b;
  tag_[index(b)] = static_cast<uint8_t>(kFree | order);
}

void Arena::unlink(unsigned order, FreeBlock* b) {
  if (b->prev)
    b->prev->next = b->next;
  else
    free_[order] = b->next;
  if (b->next) b->next->prev = b->prev;
  tag_[index(b)] = 0;
}

void* Arena::alloc(size_t len) {
  if (!base_ || len == 0 || len > capacity()) return nullptr;
  unsigned want = kMinOrder;
  while ((size_t{1} << want) < len) ++want;
  unsigned o = want;
  while (o <= max_order_ && !free_[o]) ++o;
  if (o > max_order_) return nullptr;
  FreeBlock* b = free_[o];
  unlink(o, b);
  // Split down to the wanted order; the upper halves go back free.
  while (o > want) {
    --o;
    push(o, reinterpret_cast<FreeBlock*>(reinterpret_cast<unsigned char*>(b) + (size_t{1} << o)));
  }
  tag_[index(b)] = static_cast<uint8_t>(want);
  in_use_ += size_t{1} << want;
  return b;
}

void Arena::release(void* p) {
  if (!p) return;
  size_t i = index(p);
  unsigned o = tag_[i];
  tag_[i] = 0;
  in_use_ -= size_t{1} << o;
  size_t off = static_cast<size_t>(static_cast<unsigned char*>(p) - base_);
  // Merge with the buddy while it is free and of the same order.
  while (o < max_order_) {
    size_t buddy = off ^ (size_t{1} << o);
    if (tag_[buddy >> kMinOrder] != (kFree | o)) break;
    unlink(o, reinterpret_cast<FreeBlock*>(base_ + buddy));
    off &= ~(size_t{1} << o);
    ++o;
  }
  push(o, reinterpret_cast<FreeBlock*>(base_ + off));
}

}  // namespace aem::detail

/* Reset and the vector table of the Cortex-M3 on QEMU's mps2-an385 board. */
#include <stdint.h>

extern uint32_t __etext, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
extern int main(void);
void SysTick_Handler(void);
void Uart0Rx_Handler(void);

void Reset_Handler(void)
{
    uint32_t *from = &__etext, *to = &__data_start;
    while (to < &__data_end) /* initialised data, from flash to RAM */
        *to++ = *from++;
    for (to = &__bss_start; to < &__bss_end;)
        *to++ = 0;
    main();
    for (;;)
        ;
}

static void Fault_Handler(void)
{
    for (;;) /* a fault stops the MCU: its watchdog (here: the test's timeout) notices */
        ;
}

__attribute__((section(".vectors"), used)) static void (*const vectors[])(void) = {
    (void (*)(void))&__stack_top, /* 0: initial stack pointer */
    Reset_Handler,                 /* 1 */
    Fault_Handler,                 /* 2: NMI */
    Fault_Handler,                 /* 3: HardFault */
    Fault_Handler,                 /* 4: MemManage */
    Fault_Handler,                 /* 5: BusFault */
    Fault_Handler,                 /* 6: UsageFault */
    0, 0, 0, 0,                    /* 7-10 */
    Fault_Handler,                 /* 11: SVCall */
    0, 0,                          /* 12-13 */
    Fault_Handler,                 /* 14: PendSV */
    SysTick_Handler,               /* 15 */
    Uart0Rx_Handler,               /* 16: IRQ 0, UART 0 receive */
};

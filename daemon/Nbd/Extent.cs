namespace DirBackup.Nbd;

/// <summary>One run of a block-status reply: <c>[Offset, Offset+Length)</c> with the meta context's flags.</summary>
public readonly record struct Extent(long Offset, long Length, uint Flags)
{
    public long End => Offset + Length;

    /// <summary>base:allocation: NBD_STATE_HOLE.</summary>
    public const uint Hole = 1;

    /// <summary>base:allocation: NBD_STATE_ZERO, the range reads as zeroes.</summary>
    public const uint Zero = 2;

    /// <summary>qemu:dirty-bitmap:*: the range changed since the bitmap was created or cleared.</summary>
    public const uint Dirty = 1;
}

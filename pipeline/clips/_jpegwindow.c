/*
 * pipeline._jpegwindow: decode only a window of a JPEG, with libjpeg-turbo's partial decompression.
 *
 * decode(data, top, left, bottom, right, denom) -> (pixels, top, left, height, width)
 * decode_many([(data, top, left, bottom, right, denom), ...]) -> (pixels, [(offset, top, left, height, width), ...])
 *
 * The window [top, bottom) x [left, right) is given in pixels of the image scaled by 1/denom
 * (denom 1, 2, 4 or 8: DCT-domain scaling). Rows above the window are skipped
 * (jpeg_skip_scanlines: entropy-decoded, not transformed), rows below it are never decoded,
 * and columns are cut to the iMCU columns that cover it (jpeg_crop_scanline). The returned
 * region holds the window and may be a little wider: height x width x 3 RGB bytes, its
 * top-left corner at (top, left) of the scaled image. Decoding uses libjpeg-turbo's defaults
 * (accurate integer IDCT, smooth chroma upsampling), and the region's pixels are those of a full
 * decode: smooth upsampling of subsampled chroma needs the column beyond each side of a cut,
 * so one more column is decoded on each side and dropped.
 *
 * decode_many decodes a list of windows with the GIL released once for all of them (the frames of a
 * clip), into one bytes object: item i's region starts at its `offset`.
 *
 * Errors raise ValueError with libjpeg's message (decode_many: naming the item).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

/* columns a region may exceed its window by: an iMCU column of alignment (at most 32 pixels) + 2 for context */
#define SLACK_COLUMNS 34

struct error_state {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct error_state *err = (struct error_state *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo) { (void)cinfo; /* warnings: not printed */ }

struct job {
    Py_buffer data;
    long top, left, bottom, right;
    int denom;
    size_t offset, capacity; /* where its region may go in the output, and how many bytes it may take */
    /* results */
    unsigned long y, x, height, width;
    int status; /* 0: decoded; 1: libjpeg error (message); 2: the window lies outside the image; 3: no room */
    char message[JMSG_LENGTH_MAX];
};

static size_t bound(const struct job *j) {
    long rows = j->bottom - (j->top > 0 ? j->top : 0), cols = j->right - (j->left > 0 ? j->left : 0);
    if (rows <= 0 || cols <= 0)
        return 0;
    return (size_t)rows * (size_t)(cols + SLACK_COLUMNS) * 3;
}

/* Decode one job's window into out + job->offset. Runs without the GIL. */
static void run_job(struct job *j, unsigned char *out) {
    struct jpeg_decompress_struct cinfo;
    struct error_state err;
    memset(&cinfo, 0, sizeof(cinfo));
    memset(&err, 0, sizeof(err));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.output_message = on_message;
    volatile int created = 0;
    JDIMENSION x = 0, width = 0, height = 0, y = 0, image_width = 0;
    unsigned char *dst = out + j->offset;

    if (setjmp(err.jump)) {
        if (created)
            jpeg_destroy_decompress(&cinfo);
        j->status = 1;
        memcpy(j->message, err.message, sizeof(j->message));
        return;
    }
    jpeg_create_decompress(&cinfo);
    created = 1;
    jpeg_mem_src(&cinfo, (const unsigned char *)j->data.buf, (unsigned long)j->data.len);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)j->denom;
    jpeg_start_decompress(&cinfo);
    long w = (long)cinfo.output_width, h = (long)cinfo.output_height;
    image_width = cinfo.output_width; /* jpeg_crop_scanline narrows output_width to the cut */
    long top = j->top > 0 ? j->top : 0, left = j->left > 0 ? j->left : 0;
    long bottom = j->bottom < h ? j->bottom : h, right = j->right < w ? j->right : w;
    if (top >= bottom || left >= right) {
        jpeg_destroy_decompress(&cinfo);
        j->status = 2;
        return;
    }
    /* one column more on each side: upsampled chroma at a cut's edge is not a full decode's */
    x = (JDIMENSION)(left > 0 ? left - 1 : 0);
    width = (JDIMENSION)((right < w ? right + 1 : w) - (long)x);
    if (x != 0 || width != cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &x, &width); /* moves x left to an iMCU column, widens */
    y = (JDIMENSION)top;
    height = (JDIMENSION)(bottom - top);
    if ((size_t)height * width * 3 > j->capacity) {
        jpeg_destroy_decompress(&cinfo);
        j->status = 3;
        return;
    }
    if (y > 0)
        jpeg_skip_scanlines(&cinfo, y);
    while (cinfo.output_scanline < y + height) {
        JSAMPROW row = dst + (size_t)(cinfo.output_scanline - y) * width * 3;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_destroy_decompress(&cinfo); /* also abandons the rows below the window */
    /* drop the edge columns decoded for context (kept at the image's own edges) */
    JDIMENSION cut_left = x > 0 ? 1 : 0, cut_right = x + width < image_width ? 1 : 0;
    if (cut_left || cut_right) {
        JDIMENSION kept = width - cut_left - cut_right;
        for (JDIMENSION r = 0; r < height; r++)
            memmove(dst + (size_t)r * kept * 3, dst + ((size_t)r * width + cut_left) * 3, (size_t)kept * 3);
        x += cut_left;
        width = kept;
    }
    j->y = y;
    j->x = x;
    j->height = height;
    j->width = width;
    j->status = 0;
}

static int parse_job(PyObject *args, struct job *j) {
    memset(j, 0, sizeof(*j));
    if (!PyArg_ParseTuple(args, "y*lllli", &j->data, &j->top, &j->left, &j->bottom, &j->right, &j->denom))
        return -1;
    if (j->denom != 1 && j->denom != 2 && j->denom != 4 && j->denom != 8) {
        PyBuffer_Release(&j->data);
        PyErr_SetString(PyExc_ValueError, "denom must be 1, 2, 4 or 8");
        return -1;
    }
    return 0;
}

static PyObject *job_error(const struct job *j, Py_ssize_t index) {
    char text[64] = "";
    if (index >= 0)
        snprintf(text, sizeof(text), " (item %zd)", index);
    if (j->status == 1)
        PyErr_Format(PyExc_ValueError, "JPEG decode failed%s: %s", text, j->message);
    else if (j->status == 2)
        PyErr_Format(PyExc_ValueError, "the window lies outside the image%s", text);
    else
        PyErr_Format(PyExc_ValueError, "the decoded region is larger than its bound%s", text);
    return NULL;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    struct job j;
    (void)self;
    if (parse_job(args, &j) < 0)
        return NULL;
    j.capacity = bound(&j);
    PyObject *pixels = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(j.capacity > 0 ? j.capacity : 1));
    if (pixels == NULL) {
        PyBuffer_Release(&j.data);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(pixels);
    Py_BEGIN_ALLOW_THREADS
    run_job(&j, out);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&j.data);
    if (j.status != 0) {
        Py_DECREF(pixels);
        return job_error(&j, -1);
    }
    if (_PyBytes_Resize(&pixels, (Py_ssize_t)j.height * j.width * 3) < 0)
        return NULL;
    return Py_BuildValue("(Nkkkk)", pixels, j.y, j.x, j.height, j.width);
}

static PyObject *decode_many(PyObject *self, PyObject *args) {
    PyObject *items;
    (void)self;
    if (!PyArg_ParseTuple(args, "O", &items))
        return NULL;
    PyObject *seq = PySequence_Fast(items, "decode_many takes a list of (data, top, left, bottom, right, denom)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), parsed = 0;
    struct job *jobs = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(struct job));
    PyObject *pixels = NULL, *regions = NULL, *result = NULL;
    if (jobs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t total = 0;
    for (; parsed < n; parsed++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, parsed);
        if (!PyTuple_Check(item)) {
            PyErr_Format(PyExc_TypeError, "item %zd is not a (data, top, left, bottom, right, denom) tuple", parsed);
            goto done;
        }
        if (parse_job(item, &jobs[parsed]) < 0)
            goto done;
        jobs[parsed].offset = total;
        jobs[parsed].capacity = bound(&jobs[parsed]);
        total += jobs[parsed].capacity;
    }
    pixels = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total > 0 ? total : 1));
    if (pixels == NULL)
        goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(pixels);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        run_job(&jobs[i], out);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        if (jobs[i].status != 0) {
            job_error(&jobs[i], i);
            goto done;
        }
    regions = PyList_New(n);
    if (regions == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = Py_BuildValue("(nkkkk)", (Py_ssize_t)jobs[i].offset, jobs[i].y, jobs[i].x, jobs[i].height,
                                    jobs[i].width);
        if (r == NULL)
            goto done;
        PyList_SET_ITEM(regions, i, r);
    }
    result = PyTuple_Pack(2, pixels, regions);
done:
    if (jobs != NULL) {
        for (Py_ssize_t i = 0; i < parsed; i++)
            PyBuffer_Release(&jobs[i].data);
        PyMem_Free(jobs);
    }
    Py_XDECREF(pixels);
    Py_XDECREF(regions);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(data, top, left, bottom, right, denom) -> (pixels, top, left, height, width): the RGB pixels of "
     "a window of a JPEG scaled by 1/denom (see the module's source for the details)."},
    {"decode_many", decode_many, METH_VARARGS,
     "decode_many([(data, top, left, bottom, right, denom), ...]) -> (pixels, [(offset, top, left, height, "
     "width), ...]): several windows decoded with the GIL released once."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegwindow", "Partial JPEG decoding with libjpeg-turbo.", -1, methods,
};

PyMODINIT_FUNC PyInit__jpegwindow(void) { return PyModule_Create(&module); }
